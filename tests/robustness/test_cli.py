"""Command line: --help everywhere, one-line errors, exit codes 0 / 1 / 2, --debug for tracebacks."""

import subprocess
import sys
import threading

import pytest

from tailedcore.app.cli import build_parser, main

COMMANDS = ["fit", "predict", "calibrate", "evaluate", "make-nlt", "convert-visa", "benchmark", "export", "products",
            "serve", "demo"]


def test_every_command_is_listed():
    listed = build_parser()._subparsers._group_actions[0].choices
    assert sorted(listed) == sorted(COMMANDS)


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0 and "usage: tailedcore" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    for argv in (["fit"], ["nonsense"], ["fit", "x", "--out", "m", "--method", "nope"], ["predict", "m"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_failure_is_one_line_and_debug_shows_traceback(tmp_path, capsys):
    argv = ["fit", str(tmp_path / "missing"), "--out", str(tmp_path / "m.safetensors")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tailedcore: error:") and "missing" in err
    assert main(["--debug", *argv]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_module_entry_point_exit_code(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tailedcore", "predict", str(tmp_path / "none.safetensors"),
                             str(tmp_path), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "fit | predict | evaluate | demo" not in text
    assert all(command in text.split("positional arguments")[0] for command in COMMANDS)


@pytest.mark.parametrize("place", ["before", "after"])
def test_global_options_before_or_after_the_command(place):
    options = ["--threads", "2", "--quiet", "--debug"]
    command = ["predict", "m.safetensors", "images", "--out", "o"]
    args = build_parser().parse_args(options + command if place == "before" else command + options)
    assert (args.threads, args.quiet, args.debug) == (2, True, True)
    plain = build_parser().parse_args(command)
    assert (plain.threads, plain.quiet, plain.debug) == (None, False, False)


def test_main_outside_the_main_thread_fails_in_one_line(tmp_path, capsys):
    codes = []
    argv = ["predict", str(tmp_path / "none.safetensors"), str(tmp_path), "--out", str(tmp_path / "o")]
    worker = threading.Thread(target=lambda: codes.append(main(argv)))
    worker.start()
    worker.join()
    err = capsys.readouterr().err
    assert codes == [1] and err.count("\n") == 1 and err.startswith("tailedcore: error:")

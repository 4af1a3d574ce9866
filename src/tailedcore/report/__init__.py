"""Reports: result pages (Markdown, CSV, JSON, HTML) and prediction overlays."""

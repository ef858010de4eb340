"""The report a scientist opens (HTML and Markdown) and its plots, composed from whatever stages have finished."""

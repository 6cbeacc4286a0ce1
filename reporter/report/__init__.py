"""Turn runs into a static site and review attachments; knows nothing of ONNX or torch.

gather      everything a page shows, computed from the runs before any page is rendered
charts      run data → Altair charts (diff_charts: the same for a diff)
numbers     numbers in words where they are NaN or infinite
pages       page contexts → HTML through the Jinja templates (package data)
site        the Jinja environment, offline assets, the atomic site build
review      a diff as a folder, a markdown comment with SVG charts, or one HTML file
"""

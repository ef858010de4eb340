"""Serving the LUT: classify new images against what the lut stage built, and calibrate the rejection threshold.

A shared service, not a stage: it reads lut/ (and crops images with the crop
stage's recorded settings), and runs no stage. `service` holds the query
itself, `inputs` the image references, `calibrate` the threshold on val,
`lut` the LUT loaded back, and `output` the formats of query and SQL results.
"""

"""LeRobot datasets (v3.0 parquet + mp4; v2.1 read too) in and out of our episode store.

`names` maps LeRobot's feature names to our keys, `layout` reads a dataset's metadata, `video` decodes
and encodes mp4 through PyAV, `stats` computes LeRobot's statistics, `importer` and `exporter` drive them
(`class-ros import-lerobot` / `export-lerobot`).
"""

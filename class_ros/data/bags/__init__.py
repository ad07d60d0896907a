"""rosbag2 import: mapping YAML (`mapping`), field paths (`fields`), bag reading (`reading`),
synchronisation (`sync`) and the per-bag episode builder (`episodes`). `training/convert.py` drives them."""

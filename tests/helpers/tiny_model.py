"""The smallest complete model recipe (no [run] section): what the end-to-end reliability tests train."""

TINY_MODEL = """
[train]
batch_size = 8
d_steps = 1
[eval]
report = ""
[data]
kind = "procedural"
resolution = 16
train_size = 40
test_size = 16
[prior]
kind = "gaussian"
dim = 8
[generator]
kind = "dcgan"
ch = 4
max_ch = 8
[encoder]
kind = "dcgan"
ch = 4
max_ch = 8
[posterior]
kind = "gaussian"
[discriminator]
kind = "dcgan"
ch = 4
max_ch = 8
z_width = 16
joint_width = 16
dropout = 0.2
[loss]
kind = "bigbigan"
"""

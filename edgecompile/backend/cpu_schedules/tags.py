"""Block names that legalize.py gives its TE computes and that the schedule rules look for."""
PW_FVEC_TAG = "edge_pw_fvec"  # pointwise conv, vector along output channels (blocked weights)
CONV_TAG = "edge_conv"  # NCHW conv (regular / grouped / depthwise), vector along the row

"""train: the encoders (R(2+1)D-18, audio ResNet-18), the CrissCross objective and a lean DDP trainer."""

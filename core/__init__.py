"""Pure ML for digitbot: preprocessing, the CNN, recognition, training. No I/O beyond files."""

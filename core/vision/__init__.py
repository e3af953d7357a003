"""Photo to digit crops: decoding, ink (plain and learned), segmentation, paper lines, rows, explanations."""

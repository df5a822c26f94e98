"""Data sets: folder-per-class and list-file video sets, training and test clips, and the synthetic benchmark."""

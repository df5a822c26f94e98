"""Pictures: line plots, confusion matrices and Grad-CAM overlays."""

"""Running models on videos: loading a recognizer, decoding, batching, results and Grad-CAM."""

//! Grad-CAM and saliency: why a model chose a class (`keel visualize gradcam|saliency`).

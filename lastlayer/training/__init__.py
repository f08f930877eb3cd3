"""Self-supervised training of a top-k adapter: views, objectives, the InfoNCE loss, pairs
(fresh or from cached bottom-layer states) and the Accelerate loop."""

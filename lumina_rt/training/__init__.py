"""Training: the trainer core shared by the video and V2A trainers, the video trainer and the quality evaluator."""

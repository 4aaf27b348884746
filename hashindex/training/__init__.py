"""Layer 3, training (torch): config, loop, checkpoints, recipes and their judgement on held-out
identities, image training with a teacher, losses, models, datasets and samplers.
"""

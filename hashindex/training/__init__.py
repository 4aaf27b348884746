"""Layer 3, training (torch): config, loop, optim (optimiser, schedule, model selection),
checkpoints, recipes, judge (the one judged-training driver: held-out identity folds, for
embeddings and images), image training with a teacher, losses, models, datasets and samplers.
"""

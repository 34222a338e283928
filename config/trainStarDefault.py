# Star detector whose encoder pretrains the shipped default model (make train-default).
config.size = "compact"
config.epochs = 3
config.samples_per_epoch = 192
config.batch_size = 8
config.seed = 2026
config.patience = 2
config.threads = 2

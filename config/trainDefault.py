# Trail segmenter of the shipped default model (make train-default): CPU-sized and seeded.
config.size = "compact"
config.epochs = 60
config.samples_per_epoch = 192
config.batch_size = 8
config.seed = 2026
config.patience = 12
config.threads = 2

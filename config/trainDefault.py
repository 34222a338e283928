# Trail segmenter of the shipped default model (make train-default): CPU-sized and seeded.
config.size = "compact"
config.epochs = 8
config.samples_per_epoch = 192
config.batch_size = 8
config.seed = 2026
config.patience = 3
config.threads = 2

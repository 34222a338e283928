# Embedded-survey defaults for simulateVisitImage.
# Realistic LSST-like artefact rates; see the task's config documentation.
config.cosmic_ray_rate = 6.0
config.long_cosmic_ray_detect_fraction = 0.5
config.galaxy_mag_limit = 25.0

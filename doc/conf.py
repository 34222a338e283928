"""Sphinx configuration for trail_detect (documenteer pipelines package layout)."""

from documenteer.conf.pipelinespkg import *  # noqa: F403

project = "trail_detect"
html_theme_options["logotext"] = project  # noqa: F405
html_title = project
html_short_title = project

"""Launch files of roboloop (installed to share/roboloop_bringup/launch)."""

"""Launch files of roboloop (installed to share/roboloop_bringup/launch), and running them
without `ros2 launch` (not on PyPI): `processes` starts and stops node processes,
`launch_standin` visits a launch file as launch would (make demo, tests, docker tests)."""

"""The parallel run (`make test`: pytest-xdist `--dist loadgroup`) keeps each `xdist_group` on
one worker: the ROS group's node processes, the DDP ranks and a group's shared fixtures rely on
it. Each grouped test's node id carries its group ("...@group"); the controller schedules by
that suffix. pytest 9.2 with pytest-xdist 3.8 drops the suffix and groups split silently
(pytest-dev/pytest-xdist#1386), hence the pin in requirements.txt."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("suite_scheduling")
def test_grouped_tests_carry_their_group_in_the_node_id(request: pytest.FixtureRequest) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not a --dist loadgroup worker")
    assert request.node.nodeid.endswith("@suite_scheduling"), (
        f"{request.node.nodeid}: this pytest / pytest-xdist pair does not group tests; "
        "pin them as requirements.txt does"
    )

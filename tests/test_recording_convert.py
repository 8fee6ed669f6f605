"""Parameter parsing, message validation/conversion and QoS choice (ROS-free, duck-typed).

The decoding rules themselves are tested with episode_dataset.codecs; these tests pin down
what the recorder asks of them.
"""

from __future__ import annotations

import array
import warnings
from types import SimpleNamespace as NS

import numpy as np
import pytest
from roboloop_recorder.qos_choice import (
    BEST_EFFORT,
    RELIABLE,
    TRANSIENT_LOCAL,
    VOLATILE,
    choose_qos,
    needs_resubscribe,
)

from episode_dataset import codecs
from episode_dataset.recording.convert import MessageError, convert
from episode_dataset.recording.topics import RecorderConfigError, dataset_specs, parse_topics

TOPICS = ["/s", "/img", "/a", "/r", "/d"]
TYPES = [
    "sensor_msgs/msg/JointState",
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/JointState",
    "std_msgs/msg/Float32",
    "std_msgs/msg/Bool",
]
KEYS = ["obs/state", "obs/image", "actions", "rewards", "dones"]
SHAPES = ["3", "4,5,3", "2", "", ""]


def specs():
    return {s.topic: s for s in parse_topics(TOPICS, TYPES, KEYS, SHAPES)}


def header(t=12.5):
    return NS(stamp=NS(sec=int(t), nanosec=int(round((t % 1) * 1e9))))


def image(encoding="rgb8", h=4, w=5, step=15, nbytes=60):
    return NS(
        header=header(),
        encoding=encoding,
        height=h,
        width=w,
        step=step,
        data=bytes(i % 256 for i in range(nbytes)),
    )


def test_parse_topics_defaults_and_dataset_specs():
    s = specs()
    assert s["/s"].field == "position" and s["/a"].field == "effort"
    assert s["/img"].encoding == "rgb8" and s["/img"].dtype == "uint8"
    obs, action = dataset_specs(list(s.values()))
    assert set(obs) == {"state", "image"}
    assert obs["image"].shape == (4, 5, 3) and obs["image"].source_topic == "/img"
    assert action.shape == (2,)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a["types"].__setitem__(0, "std_msgs/msg/String"), "type"),
        (lambda a: a["keys"].__setitem__(2, "act"), "key"),
        (lambda a: a["shapes"].__setitem__(1, "4,5"), "H,W,3"),
        (lambda a: a["shapes"].__setitem__(0, "x,y"), "bad shape"),
        (lambda a: a["topics"].pop(), "differ in length"),
        (lambda a: a["keys"].__setitem__(2, "obs/other"), "actions"),
        (lambda a: a["topics"].__setitem__(1, "/s"), "listed twice"),
        (lambda a: a["shapes"].__setitem__(3, "2"), "scalar"),
        (lambda a: a["keys"].__setitem__(0, "obs/a/b"), "no '/' in name"),
    ],
)
def test_parse_topics_rejects_bad_parameters(mutate, match):
    args = {
        "topics": list(TOPICS),
        "types": list(TYPES),
        "keys": list(KEYS),
        "shapes": list(SHAPES),
    }
    mutate(args)
    with pytest.raises(RecorderConfigError, match=match):
        parse_topics(**args)


def test_image_conversion_is_zero_copy_and_stamped():
    stamp, arr = convert(image(), specs()["/img"])
    assert stamp == pytest.approx(12.5)
    assert arr.shape == (4, 5, 3) and arr.dtype == np.uint8 and arr[0, 0, 1] == 1


def test_row_padded_image_is_accepted_without_its_padding():
    rows = np.concatenate(
        [np.arange(60, dtype=np.uint8).reshape(4, 15), np.full((4, 9), 255, np.uint8)], axis=1
    )
    msg = image(step=24, nbytes=0)
    msg.data = rows.tobytes()
    arr = convert(msg, specs()["/img"])[1]
    assert arr.shape == (4, 5, 3) and 255 not in arr
    assert arr.flags.c_contiguous and arr.nbytes == 60  # the padding is not kept alive
    np.testing.assert_array_equal(arr.reshape(4, 15), rows[:, :15])


@pytest.mark.parametrize(
    "msg, reason",
    [
        (image(encoding="bgr8"), "encoding"),
        (image(h=5, nbytes=75), "shape"),
        (image(nbytes=59), "size"),
        (image(step=14, nbytes=56), "size"),  # rows shorter than width * 3
    ],
)
def test_malformed_images_rejected(msg, reason):
    with pytest.raises(MessageError) as e:
        convert(msg, specs()["/img"])
    assert e.value.reason == reason


def test_joint_state_field_size_names_and_nonfinite():
    s = specs()
    js = NS(header=header(), name=[], position=[1.0, 2.0, 3.0], effort=[0.5, -0.5], velocity=[])
    assert convert(js, s["/s"])[1].tolist() == [1.0, 2.0, 3.0]
    assert convert(js, s["/a"])[1].dtype == np.float32
    for msg, reason in [
        (NS(header=header(), name=[], position=[1.0, 2.0], effort=[]), "size"),
        (NS(header=header(), name=[], position=[1.0, float("nan"), 3.0]), "nonfinite"),
        (NS(header=header(), name=["a", "b"], position=[1.0, 2.0, 3.0]), "names"),
        (NS(header=NS(stamp=NS(sec=1, nanosec=2 * 10**9)), name=[], position=[0, 0, 0]), "stamp"),
    ]:
        with pytest.raises(MessageError) as e:
            convert(msg, s["/s"])
        assert e.value.reason == reason


def test_headerless_scalars():
    s = specs()
    assert convert(NS(data=0.25), s["/r"]) == (None, pytest.approx(0.25))
    assert convert(NS(data=True), s["/d"])[1] == np.True_
    with pytest.raises(MessageError, match="nonfinite"):
        convert(NS(data=float("inf")), s["/r"])


def test_qos_follows_publishers():
    assert choose_qos([], 10) is None
    q = choose_qos([(RELIABLE, VOLATILE), (RELIABLE, TRANSIENT_LOCAL)], 10)
    assert (q.reliability, q.durability) == (RELIABLE, VOLATILE)
    q = choose_qos([(RELIABLE, VOLATILE), (BEST_EFFORT, VOLATILE)], 5)
    assert q.reliability == BEST_EFFORT and q.depth == 5
    latched = choose_qos([(RELIABLE, TRANSIENT_LOCAL)], 1)
    assert latched.durability == TRANSIENT_LOCAL
    reliable = choose_qos([(RELIABLE, VOLATILE)], 10)
    assert needs_resubscribe(reliable, [(RELIABLE, VOLATILE), (BEST_EFFORT, VOLATILE)])
    assert not needs_resubscribe(q, [(RELIABLE, VOLATILE)])


F32_MAX = float(np.finfo(np.float32).max)
EDGE_VALUES = {  # name -> a fresh value each call
    "list": lambda: [1.0, 2.0, 3.0],
    "tuple": lambda: (1.0, -2.5, 0.0),
    "ints and a bool": lambda: [1, 2, True],
    "empty": lambda: [],
    "float32 limits": lambda: [F32_MAX, -F32_MAX],
    "rounds to the limit": lambda: [float(np.nextafter(F32_MAX, np.inf)), 0.0],
    "beyond float32": lambda: [1e39, 0.0],
    "sum overflows": lambda: [1e308, 1e308],
    "huge int": lambda: [10**400],
    "nan": lambda: [float("nan"), 1.0],
    "infs": lambda: [1.0, float("inf"), -float("inf")],
    "strings": lambda: ["1.5", "2"],  # numpy parses them; the quick check leaves them to it
    "float64 array": lambda: np.array([1.0, 2.0, 3.0]),
    "float32 array": lambda: np.array([1.0, 2.0, 3.0], np.float32),  # returned as is
    "float64 array beyond": lambda: np.array([1e39]),
    "2-d array": lambda: np.array([[1.0, 2.0], [3.0, 4.0]]),
    "long": lambda: np.arange(100.0),  # longer than the quick check takes
    "long with nan": lambda: np.r_[np.arange(100.0), np.nan],
    "array.array d": lambda: array.array("d", [0.5, -0.5]),
    "array.array f nan": lambda: array.array("f", [0.5, float("nan")]),
    "generator": lambda: (x / 2 for x in range(3)),
}


def _finite_vector_reference(values, size, what):
    """numpy's check alone (what `_finite_vector` did before its quick check)."""
    with np.errstate(over="ignore"):
        arr = np.asarray(values, dtype=np.float32)
    if size is not None and arr.size != size:
        raise MessageError("size", f"{what} has {arr.size} values, expected {size}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise MessageError("nonfinite", f"{what}[{bad}] is {arr.flat[bad]} (not finite)")
    return arr


def _outcome(decode, values, size):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            out = decode(values, size, "v")
        except Exception as e:  # noqa: BLE001 - the outcome is compared, whatever it is
            return type(e).__name__, str(e)
    return out.dtype.str, out.shape, out.tobytes(), out is values


@pytest.mark.parametrize("size", [None, 2, 3])
@pytest.mark.parametrize("name", list(EDGE_VALUES))
def test_quick_float32_check_decides_as_numpy(name, size):
    """Vectors are checked in Python before numpy casts them (cheaper for a message's few
    values): the same arrays (the input itself where numpy returns it), errors, no warnings."""
    make = EDGE_VALUES[name]
    got = _outcome(codecs._finite_vector, make(), size)
    assert got == _outcome(_finite_vector_reference, make(), size)


@pytest.mark.parametrize("x", [0.25, -F32_MAX, 1e39, float("nan"), float("inf"), 3, True])
def test_float32_scalar_decodes_as_a_one_value_vector(x):
    def scalar(v, _size, _what):
        return codecs.decode_float32(NS(data=v))

    def reference(v, size, what):
        return _finite_vector_reference([v], size, "Float32.data").reshape(())

    assert _outcome(scalar, x, None)[:3] == _outcome(reference, x, None)[:3]

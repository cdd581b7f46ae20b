"""Decoding model answers and comparing two of them (sidecar.answers): exact expected values."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as kserve

from sidecar.answers import (
    AnswerError,
    Verdict,
    compare_answers,
    decode_response,
    max_abs_diff,
    predicted_labels,
)


def response(**outputs: np.ndarray) -> kserve.ModelInferResponse:
    names = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64", np.dtype("bool"): "BOOL"}
    reply = kserve.ModelInferResponse(model_name="m", model_version="1")
    for name, array in outputs.items():
        reply.outputs.add(name=name, datatype=names[array.dtype], shape=list(array.shape))
        reply.raw_output_contents.append(array.tobytes())
    return reply


def test_raw_outputs_decode_to_their_shape_and_type_from_a_message_or_bytes() -> None:
    probs = np.array([[0.25, 0.75]], np.float32)
    label = np.array([[1]], np.int64)
    reply = response(probabilities=probs, label=label)
    for given in (reply, reply.SerializeToString()):
        decoded = decode_response(given)
        assert decoded["probabilities"].dtype == np.float32
        np.testing.assert_array_equal(decoded["probabilities"], probs)
        np.testing.assert_array_equal(decoded["label"], label)


def test_typed_contents_and_bytes_tensors_decode() -> None:
    reply = kserve.ModelInferResponse()
    out = reply.outputs.add(name="scores", datatype="FP32", shape=[1, 2])
    out.contents.fp32_contents.extend([0.5, 1.5])
    text = reply.outputs.add(name="text", datatype="BYTES", shape=[2])
    text.contents.bytes_contents.extend([b"a", b"bc"])
    decoded = decode_response(reply)
    np.testing.assert_array_equal(decoded["scores"], np.array([[0.5, 1.5]], np.float32))
    assert list(decoded["text"]) == [b"a", b"bc"]
    raw = kserve.ModelInferResponse()
    raw.outputs.add(name="text", datatype="BYTES", shape=[2])
    raw.raw_output_contents.append(struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bc")
    assert list(decode_response(raw)["text"]) == [b"a", b"bc"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: r.raw_output_contents.append(b"\0" * 3), r"3 bytes for shape \[1\]"),
        (lambda r: r.raw_output_contents.extend([b"\0" * 4, b"x"]), "1 outputs but 2 raw"),
    ],
)
def test_corrupt_answers_raise_answer_error_saying_why(build: object, message: str) -> None:
    reply = kserve.ModelInferResponse()
    reply.outputs.add(name="x", datatype="FP32", shape=[1])
    build(reply)  # type: ignore[operator]
    with pytest.raises(AnswerError, match=message):
        decode_response(reply)
    with pytest.raises(AnswerError, match="unparsable"):
        decode_response(b"\xff\xff\xff")
    truncated = kserve.ModelInferResponse()
    truncated.outputs.add(name="t", datatype="BYTES", shape=[1])
    truncated.raw_output_contents.append(struct.pack("<I", 9) + b"ab")
    with pytest.raises(AnswerError, match="truncated"):
        decode_response(truncated)


def test_auto_compares_labels_and_still_measures_the_float_difference() -> None:
    served = {"label": np.array([[3]]), "probabilities": np.array([[0.1, 0.9]], np.float32)}
    same = {"label": np.array([[3]]), "probabilities": np.array([[0.5, 0.5]], np.float32)}
    other = {"label": np.array([[4]]), "probabilities": np.array([[0.1, 0.9]], np.float32)}
    agreed = compare_answers(served, same)
    assert agreed.verdict is Verdict.AGREE
    assert agreed.basis == "label(label)"
    assert agreed.max_abs_diff == pytest.approx(0.4, abs=1e-6)
    differed = compare_answers(served, other)
    assert differed.verdict is Verdict.DISAGREE
    assert differed.max_abs_diff == 0.0


def test_argmax_and_max_abs_diff_modes() -> None:
    a = {"scores": np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], np.float32)}
    b = {"scores": np.array([[0.2, 0.5, 0.3], [0.5, 0.4, 0.1]], np.float32)}
    c = {"scores": np.array([[0.2, 0.5, 0.3], [0.3, 0.6, 0.1]], np.float32)}
    assert compare_answers(a, b, mode="argmax").verdict is Verdict.AGREE
    assert compare_answers(a, c, mode="argmax").verdict is Verdict.DISAGREE
    # A named float output with classes on its last axis is compared by argmax in auto mode.
    assert compare_answers(a, b, output="scores").basis == "argmax(scores)"
    assert compare_answers(a, b, mode="max_abs_diff", tolerance=0.2).verdict is Verdict.AGREE
    assert compare_answers(a, b, mode="max_abs_diff", tolerance=0.19).verdict is Verdict.DISAGREE
    # Unnamed float-only outputs: a regression, compared by difference.
    y1, y2 = {"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.00001])}
    assert compare_answers(y1, y2).verdict is Verdict.AGREE
    assert compare_answers(y1, y2, tolerance=1e-6).verdict is Verdict.DISAGREE


def test_answers_that_do_not_line_up_are_incomparable() -> None:
    one = {"label": np.array([[1]])}
    assert compare_answers(one, {"other": np.array([[1]])}).verdict is Verdict.INCOMPARABLE
    assert compare_answers(one, {"label": np.array([1, 2])}).verdict is Verdict.INCOMPARABLE
    assert compare_answers(one, one, output="missing").verdict is Verdict.INCOMPARABLE
    assert compare_answers(one, one, mode="max_abs_diff").verdict is Verdict.INCOMPARABLE


def test_nan_counts_as_an_infinite_difference() -> None:
    assert max_abs_diff({"y": np.array([np.nan])}, {"y": np.array([1.0])}) == float("inf")
    assert max_abs_diff({"y": np.array([1])}, {"y": np.array([2])}) is None  # no float output


def test_predicted_labels() -> None:
    outputs = {"label": np.array([[3], [5]]), "probabilities": np.array([[0.9, 0.1], [0.2, 0.8]])}
    np.testing.assert_array_equal(predicted_labels(outputs), [3, 5])
    np.testing.assert_array_equal(predicted_labels(outputs, "probabilities"), [0, 1])
    np.testing.assert_array_equal(predicted_labels({"p": np.array([[0.1, 0.9]])}), [1])
    with pytest.raises(AnswerError, match="no output 'x'"):
        predicted_labels(outputs, "x")
    with pytest.raises(AnswerError, match="no outputs"):
        predicted_labels({})

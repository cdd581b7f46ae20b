"""Train the two `digits` model versions and export them into triton_models/ (run by `make models`).

Version 1 is a deliberately weak logistic regression (heavily regularised: ``C = 3e-4``), version 2
a small MLP, both trained on scikit-learn's bundled
``load_digits()`` (no download) with fixed seeds and one stratified split, so every run produces the
same models. The held-out part of the split becomes ``digits/golden.npz``, the labelled set that
tests and golden-set checks send through both engines.

Both ONNX graphs take ``pixels`` FP32 [batch, 64] (raw values 0..16; scaling is inside the graph)
and return ``probabilities`` FP32 [batch, 10] and ``label`` INT64 [batch, 1], matching
``digits/config.pbtxt``. The output files are written byte-for-byte deterministically, so a rebuild
with the same library versions leaves git clean.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "triton_models" / "digits"
SEED = 20240601
TEST_SIZE = 0.25
INPUT_NAME = "pixels"
# Opset 17 / IR 8 load in the onnxruntime that ships with every Triton release since 22.x.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
IR_VERSION = 8
# Fixed zip timestamp: numpy's savez stamps the current time, which would dirty git on rebuild.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
V1_C = 3e-4  # v1's inverse regularisation strength (docs/models.md: why v1 is weak)


def build_pipelines() -> dict[int, Pipeline]:
    """The model of each version; scaling lives in the pipeline so the graph takes raw pixels."""
    return {
        # Over-regularised on purpose: about 10 points below v2 on the golden set, so the demo's
        # experiment (a few thousand users) has a real effect to find. With the default C the two
        # versions were 0.3 points apart, far below what a few thousand users can tell apart.
        1: make_pipeline(StandardScaler(), LogisticRegression(C=V1_C, max_iter=2000)),
        2: make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(32,), max_iter=600, random_state=SEED),
        ),
    }


def to_onnx(pipeline: Pipeline) -> onnx.ModelProto:
    """Export without ZipMap and reshape ``label`` from [batch] to [batch, 1] for the config."""
    model: onnx.ModelProto = convert_sklearn(
        pipeline,
        initial_types=[(INPUT_NAME, FloatTensorType([None, 64]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    graph = model.graph
    flat = next(o for o in graph.output if o.name == "label")
    # Rename the converter's flat label, then unsqueeze it into the declared output name.
    for node in graph.node:
        node.output[:] = ["label_flat" if out == "label" else out for out in node.output]
    graph.initializer.append(helper.make_tensor("label_axes", TensorProto.INT64, [1], [1]))
    graph.node.append(helper.make_node("Unsqueeze", ["label_flat", "label_axes"], ["label"]))
    graph.output.remove(flat)
    graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1]))
    model.ir_version = IR_VERSION
    graph.name = "digits"  # skl2onnx names the graph with a random UUID
    onnx.checker.check_model(model)
    return model


def onnx_accuracy(
    model_bytes: bytes, pixels: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]
) -> float:
    """Accuracy of the exported graph itself, so a broken export cannot hide behind sklearn's."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    probabilities, label = session.run(["probabilities", "label"], {INPUT_NAME: pixels})
    if label.shape != (len(labels), 1) or probabilities.shape != (len(labels), 10):
        raise RuntimeError(f"unexpected output shapes {label.shape}, {probabilities.shape}")
    if not np.array_equal(label[:, 0], probabilities.argmax(axis=1)):
        raise RuntimeError("label output disagrees with argmax(probabilities)")
    return float(np.mean(label[:, 0] == labels))


def write_golden(
    path: Path, pixels: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]
) -> None:
    """An .npz that np.load reads, written with fixed timestamps so rebuilds are byte-identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in (("pixels", pixels), ("labels", labels)):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def main() -> int:
    digits = load_digits()
    pixels = digits.data.astype(np.float32)
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        pixels, labels, test_size=TEST_SIZE, stratify=labels, random_state=SEED
    )
    for version, pipeline in build_pipelines().items():
        pipeline.fit(x_train, y_train)
        model_bytes = to_onnx(pipeline).SerializeToString()
        out = MODEL_DIR / str(version) / "model.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(model_bytes)
        accuracy = onnx_accuracy(model_bytes, x_test, y_test)
        print(
            f"digits v{version} ({type(pipeline.steps[-1][1]).__name__}): "
            f"held-out accuracy {accuracy:.4f} on {len(y_test)} samples -> {out.relative_to(ROOT)}"
        )
    write_golden(MODEL_DIR / "golden.npz", x_test, y_test)
    print(f"golden set: {len(y_test)} samples -> {(MODEL_DIR / 'golden.npz').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

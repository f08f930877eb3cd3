"""A minimal OpenAI-style embeddings endpoint on sentence-transformers, for benchmarks/serve.py.

sentence-transformers has no server of its own; this is the smallest fair one: FastAPI +
uvicorn, one ``SentenceTransformer`` on one of its CPU backends, one request's texts per
``encode`` call, one call at a time (what a user writing a small service would do; an
OpenVINO model's infer request cannot be shared by threads).
It runs in the peers' venv (``make infinity``: transformers 4.x, optimum-onnx, OpenVINO),
never in lastlayer's, so it imports nothing from lastlayer.

Usage::

    python benchmarks/peers/st_server.py FOLDER --backend onnx|onnx-int8|openvino|openvino-int8 \
        --port 8123 [--max-length 128] [--batch-size 64]

- ``onnx``: ``backend="onnx"`` (ONNX Runtime; exported on first load);
- ``onnx-int8``: ``export_dynamic_quantized_onnx_model(..., "avx512_vnni")`` then that
  file: dynamic int8 quantization, data-free, as the sentence-transformers docs show;
- ``openvino``: ``backend="openvino"`` (OpenVINO picks bf16 by itself on AMX CPUs);
- ``openvino-int8``: ``export_static_quantized_openvino_model`` needs a calibration data
  set from the Hub (unreachable here): weight-only int8 (``OVWeightQuantizationConfig``,
  data-free) is used instead, and the result says so.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
from pathlib import Path


def load(folder: str, backend: str, max_length: int):
    from sentence_transformers import SentenceTransformer

    work = Path(tempfile.mkdtemp(prefix="st-peer-"))
    local = work / "model"
    shutil.copytree(folder, local, symlinks=False)
    if backend == "onnx":
        model = SentenceTransformer(str(local), backend="onnx", device="cpu")
    elif backend == "onnx-int8":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        model = SentenceTransformer(str(local), backend="onnx", device="cpu")
        model.save_pretrained(str(local))
        export_dynamic_quantized_onnx_model(model, "avx512_vnni", str(local))
        model = SentenceTransformer(str(local), backend="onnx", device="cpu",
                                    model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx"})
    elif backend == "openvino":
        model = SentenceTransformer(str(local), backend="openvino", device="cpu")
    elif backend == "openvino-int8":
        from optimum.intel import OVWeightQuantizationConfig

        model = SentenceTransformer(
            str(local), backend="openvino", device="cpu",
            model_kwargs={"quantization_config": OVWeightQuantizationConfig(bits=8)})
    else:
        raise SystemExit(f"unknown backend {backend}")
    model.max_seq_length = max_length
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import uvicorn
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool

    model = load(args.folder, args.backend, args.max_length)
    lock = threading.Lock()  # one encode at a time: an OpenVINO infer request is not shared
    app = FastAPI()

    def encode(texts: list[str]):
        with lock:
            return model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/v1/embeddings")
    async def embeddings(body: dict) -> dict:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = await run_in_threadpool(encode, texts)
        return {"object": "list", "model": body.get("model", ""),
                "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                         for i, v in enumerate(vectors)]}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

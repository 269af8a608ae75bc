"""The drawing pad: a small page where a person draws a digit (mouse or touch) or drops a photo,
and the model's answer with its (calibrated) probabilities as bars, or "not sure" with the
likeliest digits when no digit is likely enough.

FastAPI and uvicorn come with MLflow (its scoring server uses them), so the pad adds no
dependency. Its one endpoint takes the image's bytes as the request body, reads and normalises
them exactly as `predict` reads a file, and answers with the digit, the ten probabilities and
the 28x28 image the model saw; bad input gets a 4xx with a message the page shows.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from resnet_mnist.inference import predict as P
from resnet_mnist.runtime.errors import ProjectError

MAX_UPLOAD = 8 * 1024 * 1024  #: bytes: a phone photo fits, a runaway upload does not


def page() -> str:
    """The pad's HTML (shipped in the package, so an installed wheel serves it too)."""
    return resources.files("resnet_mnist.inference").joinpath("static/pad.html").read_text(encoding="utf-8")


MIN_CONFIDENCE = 0.5  #: below this (calibrated) probability the pad says "not sure"


def create_app(model: Any, uri: str, min_confidence: float = MIN_CONFIDENCE) -> FastAPI:
    """The pad's web app around a loaded model (`uri` is what the page names); an answer less
    likely than `min_confidence` is "not sure", with the likeliest digits."""
    app = FastAPI(title="resnet-mnist pad", docs_url=None, redoc_url=None, openapi_url=None)
    html = page()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return html

    @app.get("/model")
    def model_info() -> dict[str, str | float]:
        return {"uri": uri, "min_confidence": min_confidence}

    @app.post("/classify")
    async def classify(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_UPLOAD:
            return _refuse(413, f"the image is {int(declared):,} bytes; the pad takes at most {MAX_UPLOAD:,}")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > MAX_UPLOAD:
                return _refuse(413, f"the image is over {MAX_UPLOAD:,} bytes, the most the pad takes")
        if not body:
            return _refuse(400, "no image in the request")
        try:
            digit = P.load_digit(bytes(body), name="the upload")
        except ProjectError as exc:
            return _refuse(400, str(exc).replace("the upload: ", "", 1))
        (prediction,) = P.predict(model, digit[None])
        return JSONResponse(
            {
                "digit": prediction.digit,
                "probability": prediction.probability,
                "sure": prediction.sure(min_confidence),
                "min_confidence": min_confidence,
                "top": [d for d, _ in prediction.top(3)],
                "probabilities": [float(p) for p in prediction.probabilities],
                "seen": digit.tolist(),
            }
        )

    return app


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def serve(model: Any, uri: str, host: str, port: int, min_confidence: float = MIN_CONFIDENCE) -> None:
    """Serve the pad around a loaded model until stopped (Ctrl-C or SIGTERM)."""
    import uvicorn

    uvicorn.run(create_app(model, uri, min_confidence), host=host, port=port, log_level="warning")

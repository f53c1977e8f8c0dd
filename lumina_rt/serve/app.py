"""The HTTP API of `lumina-rt serve`: the OpenAI Videos shape (`POST /v1/videos` -> poll -> download), with
lumina_rt's own fields beside OpenAI's, errors in OpenAI's shape, Server-Sent Events, Prometheus metrics and the
web page. docs/serving.md has the table of routes.

Every submission is checked, before it is queued, as a `lumina_rt.request.GenerationRequest` against the engines
(the CLI's and the Python API's checks, word for word): a request the engines cannot serve is a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lumina_rt.errors import LuminaError
from lumina_rt.request import GenerationRequest
from lumina_rt.serve.scheduler import OUTPUT_FILES, Scheduler
from lumina_rt.serve.store import Job, JobStore, QueueFull

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

# Fields a submission may hold: OpenAI's, then lumina_rt's (`GenerationRequest.from_http` spelling).
OPENAI_FIELDS = ("prompt", "model", "seconds", "size", "input_reference")
LUMINA_FIELDS = (
    "negative_prompt",
    "seed",
    "steps",
    "preset",
    "schedule",
    "cfg",
    "motion",
    "neg_motion",
    "cache",
    "audio",
    "audio_steps",
    "unconditional",
    "fps",
    "frames",
    "height",
    "width",
)
_INT_FIELDS = {"seed", "steps", "audio_steps", "frames", "height", "width"}
_JSON_FIELDS = {"cfg", "motion", "neg_motion", "schedule"}


@dataclass
class ServeSettings:
    """What the routes need besides the runtime, store and scheduler."""

    model: str = "lumina-video"
    api_key: str | None = None
    max_queue: int = 64
    max_body_bytes: int = 1 << 20
    default_size: tuple[int, int, int] | None = None  # (frames, height, width); None: the pipeline's


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, **headers: str):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers or None)


# ---------------------------------------------------------------------------------------------- response models
# (the OpenAPI document: what clients and the schema fuzzing test read)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class VideoError(BaseModel):
    code: str
    message: str


class Video(BaseModel):
    id: str
    object: Literal["video"]
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    seconds: str
    size: str
    prompt: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    # lumina_rt's own fields
    queue_position: int | None = None
    attempts: int
    seed: int
    fps: float
    frames: int
    evaluations: int | None = None
    backend: str | None = None
    batch_size: int | None = None
    timings: dict[str, float] | None = None
    # under Ray Serve: the generator replica that made it, its node, how long the batch waited for a free replica
    replica: dict[str, str | float] | None = None


class VideoList(BaseModel):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"]
    deleted: bool


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 429)
}

_CREATE_SCHEMA = {
    "type": "object",
    "required": ["prompt"],
    "properties": {
        "prompt": {"type": "string", "description": "what the video shows"},
        "model": {"type": "string"},
        "seconds": {"type": "string", "description": "length in seconds (frames = seconds x fps)"},
        "size": {"type": "string", "description": "WIDTHxHEIGHT", "pattern": "^[0-9]+x[0-9]+$"},
        "negative_prompt": {"type": "string"},
        "seed": {"type": "integer", "minimum": 0},
        "steps": {"type": "integer"},
        "preset": {"type": "string"},
        "schedule": {"description": 'patch schedule: "1x2" or ["2x2", [0.4, "1x2"]]'},
        "cfg": {"description": "guidance scale: a number or a time-aware list"},
        "motion": {"description": "motion score: a number or a time-aware list"},
        "neg_motion": {"description": "negative-branch motion score"},
        "cache": {
            "type": "string",
            "description": "step caching: off, safe, fast, safe+cfg (safe plus guidance reuse) or a threshold",
        },
        "audio": {"type": "boolean"},
        "audio_steps": {"type": "integer"},
        "unconditional": {"type": "boolean", "description": "true: a video with no prompt (prompt empty)"},
        "fps": {"type": "number"},
        "frames": {"type": "integer"},
        "height": {"type": "integer"},
        "width": {"type": "integer"},
    },
}


# ---------------------------------------------------------------------------------------------- the app
def create_app(runtime: Any, store: JobStore, scheduler: Scheduler, settings: ServeSettings) -> FastAPI:
    """The FastAPI app over a loaded runtime, a job store and its running scheduler."""
    app = FastAPI(title="lumina-rt serve", version="1", description=(__doc__ or "").splitlines()[0])
    metrics = scheduler.metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        reason = {401: "unauthorized", 413: "too_large", 429: "queue_full"}.get(exc.status, "bad_request")
        if exc.status != 404:
            metrics.rejected.labels(reason).inc()
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = first.get("loc", ())
        param = str(where[-1]) if where else None
        return ApiError(400, f"{param}: {first.get('msg', 'invalid value')}", param, "invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), None, None).response()

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        """The API key on /v1 (constant-time comparison) and the body size limit."""
        if request.url.path.startswith("/v1") and settings.api_key:
            given = request.headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
                metrics.rejected.labels("unauthorized").inc()
                text = "missing API key" if not given else "wrong API key"
                return ApiError(401, f"{text}: send Authorization: Bearer KEY", None, "invalid_api_key").response()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            metrics.rejected.labels("too_large").inc()
            return ApiError(
                413, f"the request body is {length} bytes, at most {settings.max_body_bytes}", None, "body_too_large"
            ).response()
        return await call_next(request)

    # ------------------------------------------------------------------ videos
    @app.post(
        "/v1/videos",
        response_model=Video,
        responses=_ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _CREATE_SCHEMA},
                    "multipart/form-data": {"schema": _CREATE_SCHEMA},
                },
            }
        },
    )
    async def create_video(request: Request) -> JSONResponse:
        """Queue a video: OpenAI's fields (prompt, model, seconds, size) and lumina_rt's; JSON or a multipart
        form. An `Idempotency-Key` header returns the job a repeated submission made."""
        body = await _read_body(request, settings.max_body_bytes)
        fields = await run_in_threadpool(check_submission, runtime, body, settings)
        fields["params"]["submitted_at"] = time.time()
        key = request.headers.get("idempotency-key")
        try:
            job, created = store.add(**fields, idempotency_key=key or None, max_queue=settings.max_queue)
        except QueueFull as exc:
            raise ApiError(
                429,
                f"{exc}; retry later",
                None,
                "queue_full",
                **{"Retry-After": str(scheduler.retry_after())},
            ) from None
        if created:
            scheduler.notify()
        return JSONResponse(video_object(job, store), status_code=200)

    @app.get("/v1/videos", response_model=VideoList, responses=_ERRORS)
    def list_videos(after: str | None = None, limit: int = 20, order: Literal["asc", "desc"] = "desc") -> JSONResponse:
        """The jobs, newest first (order=desc) or oldest first, `limit` (1..100) after the job `after`."""
        if not 1 <= limit <= 100:
            raise ApiError(400, f"limit: {limit} is outside 1..100", "limit", "invalid_value")
        jobs, more = store.list(after, limit, order)
        data = [video_object(j, store) for j in jobs]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )

    @app.get("/v1/videos/{video_id}", response_model=Video, responses=_ERRORS)
    def retrieve_video(video_id: str) -> JSONResponse:
        return JSONResponse(video_object(_job(store, video_id), store))

    @app.delete("/v1/videos/{video_id}", response_model=VideoDeleted, responses=_ERRORS)
    def delete_video(video_id: str) -> JSONResponse:
        """Delete a job: a queued one never runs, a running one stops at its next sampler step."""
        job = store.delete(video_id)
        if job is None:
            raise _not_found(video_id)
        scheduler.cancel(video_id)
        return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})

    @app.get(
        "/v1/videos/{video_id}/content",
        responses={
            **_ERRORS,
            200: {"content": {"video/mp4": {}, "image/png": {}}, "description": "the video or an image of it"},
        },
        response_class=Response,
    )
    def download_video(video_id: str, variant: Literal["video", "thumbnail", "spritesheet"] = "video") -> Response:
        """The MP4 (with its sound track when audio was asked), a PNG thumbnail or a PNG sprite sheet."""
        job = _job(store, video_id)
        if job.status != "completed":
            raise ApiError(
                409,
                f"video {video_id!r} is {job.status}"
                + (f" ({job.error_message})" if job.error_message else "")
                + ": its content exists once it is completed",
                None,
                "video_not_ready",
            )
        name, media = OUTPUT_FILES[variant]
        path = store.output_dir(video_id) / name
        if not path.is_file():
            raise ApiError(404, f"video {video_id!r} has no {variant} (it expired or was deleted)", None, "not_found")
        return FileResponse(path, media_type=media, filename=f"{video_id}{path.suffix}")

    @app.get(
        "/v1/videos/{video_id}/events",
        responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "status and progress"}},
        response_class=StreamingResponse,
    )
    async def video_events(video_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: one `video` event (the Video object) at each change of status or progress, until
        the job finishes (or a `deleted` event)."""
        _job(store, video_id)

        async def events():
            last = None
            idle = 0.0
            while not await request.is_disconnected():
                job = await run_in_threadpool(store.get, video_id)
                if job is None:
                    yield f"event: deleted\ndata: {json.dumps({'id': video_id})}\n\n"
                    return
                state = (job.status, job.progress)
                if state != last:
                    last, idle = state, 0.0
                    yield f"event: video\ndata: {json.dumps(video_object(job, store))}\n\n"
                    if job.status in ("completed", "failed"):
                        return
                elif idle >= 15.0:
                    idle = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(0.02)
                idle += 0.02

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ service
    @app.get("/v1/models", responses=_ERRORS)
    def list_models() -> dict[str, Any]:
        """The served model, with lumina_rt's fields: the sizes and lengths (at 8 fps) the engines serve."""
        served = served_shapes(runtime)
        frames, height, width = settings.default_size or runtime.pipeline.default_size or served[-1]
        model = {
            "id": settings.model,
            "object": "model",
            "created": 0,
            "owned_by": "lumina_rt",
            "sizes": sorted({f"{w}x{h}" for _, h, w in served}, key=lambda s: [int(v) for v in s.split("x")]),
            "seconds": [_seconds_text(f, 8) for f in sorted({f for f, _, _ in served})],
            "default_size": f"{width}x{height}",
            "default_seconds": _seconds_text(frames, 8),
            "backend": runtime.engines.backend_name,
            "audio": bool(runtime.engines.manifest.get("v2a")),
        }
        return {"object": "list", "data": [model]}

    @app.get("/health")
    def health() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "not ready"}})
    def ready() -> JSONResponse:
        """Ready: the engines are loaded and the worker runs (503 otherwise)."""
        ok = bool(scheduler.ready)
        body = {"ready": ok, "model": settings.model, "backend": runtime.engines.backend_name}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response)
    def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ---------------------------------------------------------------------------------------------- helpers
def _not_found(video_id: str) -> ApiError:
    return ApiError(404, f"no video {video_id!r} (unknown, deleted or expired)", None, "not_found")


def _job(store: JobStore, video_id: str) -> Job:
    job = store.get(video_id)
    if job is None:
        raise _not_found(video_id)
    return job


def video_object(job: Job, store: JobStore) -> dict[str, Any]:
    """The OpenAI Video object of a job, with lumina_rt's fields beside (queue position, attempts, evaluations,
    backend, batch size, timings)."""
    result = job.result or {}
    p = job.params
    return {
        "id": job.id,
        "object": "video",
        "model": job.model,
        "status": job.status,
        "progress": int(job.progress),
        "created_at": job.created_at,
        "completed_at": job.completed_at,
        "expires_at": job.expires_at,
        "seconds": job.seconds,
        "size": job.size,
        "prompt": job.prompt,
        "error": None if job.error_code is None else {"code": job.error_code, "message": job.error_message or ""},
        "remixed_from_video_id": None,
        "queue_position": store.queue_position(job) if job.status == "queued" else None,
        "attempts": job.attempts,
        "seed": p["seed"],
        "fps": p["fps"],
        "frames": p["frames"],
        "evaluations": result.get("evaluations"),
        "backend": result.get("backend"),
        "batch_size": result.get("batch_size"),
        "timings": result.get("timings"),
        "replica": result.get("replica"),
    }


async def _read_body(request: Request, limit: int) -> dict[str, Any]:
    """The submission as a dict: JSON, or a multipart / urlencoded form (numbers and time-aware JSON parsed)."""
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", None, "body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or (not ctype and raw.strip().startswith(b"{")):
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}", None, "invalid_json")
        return body
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        from starlette.datastructures import Headers, UploadFile
        from starlette.formparsers import FormParser, MultiPartParser

        async def stream():
            yield raw
            yield b""

        headers = Headers(raw=request.headers.raw)
        parser_cls = MultiPartParser if ctype == "multipart/form-data" else FormParser
        try:
            form = await parser_cls(headers, stream()).parse()
        except Exception as exc:  # the parsers raise their own types for malformed bodies
            raise ApiError(400, f"malformed form body: {exc}", None, "invalid_form") from None
        body: dict[str, Any] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                raise ApiError(400, f"{name}: file uploads are not supported", name, "unsupported_field")
            if "[" in name:  # the openai client spreads a list of extra_body over name[] fields: ambiguous
                base = name.split("[", 1)[0]
                raise ApiError(
                    400,
                    f"{base}: in a multipart form a list goes as one JSON string (extra_body={{{base!r}: "
                    "json.dumps(value)}), or send the request as JSON",
                    base,
                    "invalid_value",
                )
            body[name] = _form_value(name, value)
        return body
    raise ApiError(
        415, f"send JSON or a multipart form (Content-Type {ctype or 'missing'!r})", None, "unsupported_media_type"
    )


def _form_value(name: str, text: str) -> Any:
    """A form field's value in the type JSON would give it (the request model checks it)."""
    if name in _INT_FIELDS:
        try:
            return int(text)
        except ValueError:
            return text
    if name == "fps":
        try:
            return float(text) if "." in text else int(text)
        except ValueError:
            return text
    if name in ("audio", "unconditional"):
        return {"true": True, "false": False, "1": True, "0": False}.get(text.strip().lower(), text)
    if name in _JSON_FIELDS:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    if name == "cache":
        try:
            return float(text)
        except ValueError:
            return text
    return text


_PARAM = re.compile(r'^"(\w+)"')


def _param_of(message: str) -> str | None:
    """The field an error message names (`"frames": 0: ...`)."""
    m = _PARAM.match(message)
    if m:
        return m.group(1)
    first = message.split(" ", 1)[0]
    return first if first in OPENAI_FIELDS + LUMINA_FIELDS else None


def served_shapes(runtime: Any) -> list[tuple[int, int, int]]:
    """(frames, height, width) the engines serve, every scale's."""
    shapes = {
        (int(s["frames"]), int(s["height"]), int(s["width"]))
        for p in runtime.engines.profiles.values()
        for s in p.served
    }
    return sorted(shapes)


def _seconds_text(frames: int, fps: float) -> str:
    return f"{frames / fps:g}"


def check_submission(runtime: Any, body: dict[str, Any], settings: ServeSettings) -> dict[str, Any]:
    """A submission's store fields (model, prompt, seconds, size, params), or ApiError 400 naming the field. The
    request is checked as the CLI's and the Python API's are (`GenerationRequest`), plus OpenAI's `seconds` and
    `size` against the served shapes and the prompt's caption length against the engines."""
    unknown = sorted(set(body) - set(OPENAI_FIELDS) - set(LUMINA_FIELDS))
    if unknown:
        raise ApiError(
            400,
            f"unknown field {unknown[0]!r}; accepted: {list(OPENAI_FIELDS[:4] + LUMINA_FIELDS)}",
            unknown[0],
            "unknown_field",
        )
    if body.get("input_reference") is not None:
        raise ApiError(400, "input_reference: image-to-video is not served", "input_reference", "unsupported_field")
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):  # empty or missing: the request model's words, below
        raise ApiError(400, f"prompt: one string per video, got {json.dumps(prompt)}", "prompt", "invalid_value")
    model = body.get("model")
    if model is not None and model != settings.model:
        raise ApiError(400, f"model: {model!r} is not served; served: [{settings.model!r}]", "model", "invalid_value")
    served = served_shapes(runtime)
    sizes = sorted({f"{w}x{h}" for _, h, w in served}, key=lambda s: [int(v) for v in s.split("x")])
    fields = {k: body[k] for k in LUMINA_FIELDS if body.get(k) is not None}
    try:  # the fields alone first (fps before seconds uses it), in the request model's words
        GenerationRequest.from_http({"prompt": prompt, **fields})
    except LuminaError as exc:
        raise ApiError(400, str(exc), _param_of(str(exc)), "invalid_value") from None
    prompt = prompt or ""  # "unconditional": true
    default = settings.default_size or runtime.pipeline.default_size or served[-1]
    fps = fields.get("fps", 8)
    size = body.get("size")
    if size is not None:
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(size))
        if not m:
            raise ApiError(400, f"size: {size!r} is not WIDTHxHEIGHT; served: {sizes}", "size", "invalid_value")
        width, height = int(m.group(1)), int(m.group(2))
        for name, value in (("width", width), ("height", height)):
            if fields.get(name, value) != value:
                raise ApiError(400, f"{name}: {fields[name]} disagrees with size {size!r}", name, "invalid_value")
            fields[name] = value
        if (width, height) not in {(w, h) for _, h, w in served}:
            raise ApiError(400, f"size: {size!r} is not served; served sizes: {sizes}", "size", "invalid_value")
    seconds = body.get("seconds")
    if seconds is not None:
        try:
            value = float(seconds)
        except (TypeError, ValueError):
            value = float("nan")
        frame_counts = sorted({f for f, _, _ in served})
        choices = [_seconds_text(f, fps) if isinstance(fps, (int, float)) and fps > 0 else str(f) for f in frame_counts]
        frames = round(value * fps) if value == value and isinstance(fps, (int, float)) and fps > 0 else -1
        if frames not in frame_counts or abs(frames - value * fps) > 1e-6:
            raise ApiError(
                400,
                f"seconds: {seconds!r} is not served at {fps:g} fps; served: {choices} (frames {frame_counts})"
                if isinstance(fps, (int, float))
                else f"seconds: {seconds!r} needs a numeric fps",
                "seconds",
                "invalid_value",
            )
        if fields.get("frames", frames) != frames:
            raise ApiError(
                400, f"frames: {fields['frames']} disagrees with seconds {seconds!r}", "frames", "invalid_value"
            )
        fields["frames"] = frames
    for name, value in zip(("frames", "height", "width"), default):
        fields.setdefault(name, value)
    try:
        request = GenerationRequest.from_http({"prompt": prompt, **fields})
        config, (frames, height, width) = request.check(runtime.pipeline)
        if (frames, height, width) not in served:
            raise ApiError(
                400,
                f"frames x height x width {frames}x{height}x{width} is not served; served: "
                + ", ".join(f"{f}x{h}x{w}" for f, h, w in served),
                "size" if size is not None else "frames",
                "invalid_value",
            )
        pipe = runtime.pipeline
        caption = pipe.encode([prompt]).cap_feats.shape[1]
        if config.guided:
            caption = max(caption, pipe.encode([request.negative_prompt or ""]).cap_feats.shape[1])
        grid = pipe.latent_shape(frames, height, width)
        runtime.engines.check_request(grid, config.combos(), 2 if config.guided else 1, int(caption), "")
        if request.audio:
            if not runtime.engines.manifest.get("v2a"):
                raise ApiError(400, "audio: these engines have no sound model", "audio", "invalid_value")
            pipe.audio_stage().check(frames, float(request.fps), f"the requested video ({frames} frames)")
    except ApiError:
        raise
    except LuminaError as exc:
        message = str(exc)
        param = _param_of(message)
        if param is None and "caption" in message:
            param = "prompt"
        raise ApiError(400, message, param, "invalid_value") from None
    params = {
        "prompt": prompt,
        "negative_prompt": request.negative_prompt or "",
        "frames": frames,
        "height": height,
        "width": width,
        "fps": request.fps,
        "seed": request.seed,
        **{k: getattr(request, k) for k in ("steps", "preset", "schedule", "cfg", "motion", "neg_motion", "cache")},
        "audio": bool(request.audio),
        "audio_steps": request.audio_steps,
        "unconditional": bool(request.unconditional),
    }
    return {
        "model": settings.model,
        "prompt": prompt,
        "seconds": _seconds_text(frames, float(request.fps)),
        "size": f"{width}x{height}",
        "params": params,
    }

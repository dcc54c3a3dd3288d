"""``chatforge serve``: an OpenAI-compatible API (FastAPI + uvicorn) and the web UI.

Endpoints (all under /v1 need ``Authorization: Bearer KEY`` when the server has an API key):

    GET  /v1/models                 the served checkpoints, by name (base, sft, rl, or --model NAME=PATH)
    POST /v1/completions            raw text completion (base-model playground), SSE with "stream": true
    POST /v1/chat/completions       chat like ``chatforge chat``: the model's tool calls run inside generation
                                    (streamed as ``delta.parts``, never as control-token text in content), the
                                    oldest exchanges are trimmed to fit the context (keeping the system prompt)
    POST /v1/tokenize               token ids, pieces and bytes of a text (the tokenizer page)
    POST /v1/arena/battle           two anonymous models answer one prompt
    POST /v1/arena/vote             record a vote (run/arena/votes.json), reveal the models
    GET  /v1/arena/leaderboard      Bradley–Terry ratings with 95% bootstrap intervals from all votes
                                    (people's and the automatic arena's, counted by judge)
    POST /v1/internals              logit lens, attention maps, residual norms of a prompt (pages.py)
    GET  /v1/report                 the run's report.md as HTML (figures inlined);  GET /report  its page
    GET  /openapi.json, /docs       the API spec;   GET /  the web UI (chatforge/static)

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad parameters
(never FastAPI's 422), 401 for a wrong key, 404 for an unknown model, 503 when the queue is full.
Everything is validated before the first streamed byte. Standard OpenAI fields chatforge has no use
for (``tools``, ``store``, ...) are accepted and named in a ``Warning`` response header; penalties,
``logit_bias`` and ``response_format: text`` are applied; roles ``developer`` and ``tool`` are read
(``serve/messages.py``). Generation runs in one ``batcher.Batcher``
thread per model, so concurrent requests share batched decode steps.

No endpoint touches the file system except the arena's votes file inside the run directory (written)
and the run's report.md and report/ figures (read).

The modules: ``schemas.py`` (the request models, their validation and the error shape), ``served.py``
(the served models, the shared ``AppState``, request -> batcher -> SSE), ``routes.py`` (the route
functions, error handlers and API-key check), ``pages.py`` (the report and internals pages), and this
file (``create_app``, the config, the CLI).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge.assistant.sandbox import add_unsafe_python_arg, apply_unsafe_python_arg
from chatforge.assistant.tools import default_tools
from chatforge.common import (add_config_args, CfError, config_from_args, get_device, make_parser, print0,
                              print_config, run_dir)
from chatforge.eval.arena import VoteStore
from chatforge.model.checkpoint import latest_checkpoint, load_checkpoint, model_specs
from chatforge.model.quant import KINDS, quantize_for_inference
from chatforge.report import load_results
from chatforge.serve.batcher import Batcher
from chatforge.serve.messages import best_assistant
from chatforge.serve.pages import add_page_routes
from chatforge.serve.routes import auth_and_last_resort, on_api_error, on_http_error, on_invalid, ROUTES, STATIC
from chatforge.serve.schemas import ApiError, ERRORS
from chatforge.serve.served import AppState, Served
from chatforge.world.build import load_world


STAGES = ("base", "sft", "rl")


# ----------------------------------------------------------------------------- the app

def create_app(models: dict[str, tuple[Any, Any]], run_dir: str | Path | None = None, api_key: str | None = None,
               max_batch: int = 16, max_queue: int = 1024, tools: Callable[[str, str], str] | None = None) -> FastAPI:
    """The ASGI app serving ``models`` {name: (GPT, Tokenizer)}; arena votes go to run_dir/arena/;
    ``tools(name, input) -> str`` (e.g. ``assistant.tools.ToolBox``) runs the model's tool calls in chat."""
    if not models:
        raise CfError("serve: no models to serve (give --run with base/sft/rl checkpoints or --model NAME=PATH)")
    served = {name: Served(name, m, tok, Batcher(m, tok, max_batch=max_batch, max_queue=max_queue, tools=tools))
              for name, (m, tok) in models.items()}
    results = load_results(run_dir) if run_dir is not None else {}
    st = AppState(served, VoteStore(Path(run_dir) / "arena" / "votes.json") if run_dir is not None else None,
                  api_key, best_assistant(results, list(served)))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for s in served.values():
            s.batcher.close()

    app = FastAPI(title="chatforge", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API of chatforge checkpoints (completions, chat, tokenize, arena).")
    app.state.cf, app.state.served = st, served
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.middleware("http")(auth_and_last_resort)
    for method, path, endpoint, in_schema in ROUTES:
        app.add_api_route(path, endpoint, methods=[method], responses=ERRORS if in_schema else None,
                          include_in_schema=in_schema)
    add_page_routes(app, st.model, Path(run_dir) if run_dir is not None else None, ApiError, STATIC / "index.html",
                    ERRORS)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ----------------------------------------------------------------------------- loading and CLI

@dataclass
class ServeConfig:
    run: str = field(default="", metadata={"help": "run directory: serves its base/sft/rl checkpoints; arena votes go here"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (0.0.0.0 exposes the server to the network)"})
    port: int = field(default=8000, metadata={"help": "port"})
    api_key: str = field(default="", metadata={"help": "require 'Authorization: Bearer KEY' on /v1 (also $CHATFORGE_API_KEY)"})
    device: str = field(default="auto", metadata={"help": "cpu | cuda | mps | auto"})
    max_batch: int = field(default=16, metadata={"help": "rows decoded together per model (continuous batching)"})
    tools: bool = field(default=True, metadata={"help": "run the model's tool calls in chat (calculator, python, "
                                                        "search over the run's world)"})
    weights: str = field(default="fp32", metadata={"help": "inference weights: fp32 | bf16 | fp16 | int8 (weight-only)",
                                                   "choices": list(KINDS)})


def find_models(run: str | Path | None, specs: list[str]) -> dict[str, Path]:
    """{name: checkpoint path} from a run dir's stage folders and NAME=PATH specs (specs win)."""
    out: dict[str, Path] = {}
    if run:
        rd = run_dir(run)           # a bare name means runs/<name>
        if not rd.is_dir():
            raise CfError(f"--run {rd}: not a directory")
        for stage in STAGES:
            if (rd / stage).is_dir() and latest_checkpoint(rd / stage) is not None:
                out[stage] = rd / stage
    out.update(model_specs(specs))
    if not out:
        raise CfError("serve: no checkpoints found; give --run DIR (with base/, sft/ or rl/) or --model NAME=PATH")
    return out


def default_run_dir(paths: dict[str, Path]) -> Path:
    """Where arena votes go when no --run is given: the run dir above the first checkpoint."""
    p = next(iter(paths.values())).resolve()
    if p.name.startswith("step_"):
        p = p.parent
    return p.parent


def cli(argv: list[str]) -> None:

    parser = make_parser("chatforge serve", "OpenAI-compatible API server and web UI")
    add_config_args(parser, ServeConfig)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="serve a checkpoint under NAME (repeatable)")
    add_unsafe_python_arg(parser)
    args = parser.parse_args(argv)
    apply_unsafe_python_arg(args)
    cfg = config_from_args(ServeConfig, args)
    key = cfg.api_key or os.environ.get("CHATFORGE_API_KEY", "")
    print_config({**cfg.__dict__, "api_key": "***" if key else ""}, "serve config")
    paths = find_models(cfg.run or None, args.model)
    device = get_device(cfg.device)
    models = {}
    for name, path in paths.items():
        ck = load_checkpoint(path, device=device)
        models[name] = (quantize_for_inference(ck.model, cfg.weights), ck.tokenizer)
        print0(f"serve: model '{name}' <- {ck.path} ({ck.model.num_params() / 1e6:.1f}M params)")
    votes_dir = run_dir(cfg.run) if cfg.run else default_run_dir(paths)
    print0(f"serve: arena votes -> {votes_dir / 'arena' / 'votes.json'}")
    tools = None
    if cfg.tools:
        rd = run_dir(cfg.run) if cfg.run else None
        tools = default_tools(load_world(rd) if rd is not None and (rd / "world" / "world.json").exists() else None)
    app = create_app(models, votes_dir, key or None, max_batch=cfg.max_batch, tools=tools)
    if app.state.cf.chat_default:
        print0(f"serve: the web chat starts on '{app.state.cf.chat_default}' (RL only if it beat SFT in results.json)")
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print0(f"serve: WARNING: listening on {cfg.host} without an API key")
    print0(f"serve: http://{cfg.host}:{cfg.port}/  (API at /v1, spec at /openapi.json)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")

"""The endpoints, one APIRouter per module: health, models, completions, chat. They import FastAPI at module
level, so only ``create_app`` imports this package (``zhgpt serve --help`` must work without the [serve] extra)."""
from zhgpt.apps.serve.routes import chat, completions, health, models

OPEN = [health.router]                                       # answered without the API key
KEYED = [models.router, completions.router, chat.router]     # /v1/*: the API key first, when there is one

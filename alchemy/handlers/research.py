"""research: research an idea and score it.

Job data (docs/schema.md, "Job data")::

    {"idea_id": "<uuid>",                              required
     "type": "keywords|competitors|trends|full",       required (full = all three, one call)
     "provider": "anthropic|openai|offline", "model": "..."}   optional overrides

The result is merged into ``ideas.research`` section by section (a later ``trends`` run
keeps the ``keywords`` section), the scores are recomputed from the merged research
(:mod:`alchemy.content.research_scores`), and the run itself is kept in ``research_runs``
keyed by the job id, which is what makes a retried job finish without a second call.

The piece of paid work is the idea's research of one type (work key
``research:<idea id>:<type>``): one runner at a time, its call through the ledger
(:mod:`alchemy.paid`). The idea records the job in progress (``research_job_id``), so
every way the job can end in failure, the engine's included (``on_dead``), leaves the idea
``failed`` with the reason; a failure never touches earlier research or scores.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from alchemy.content.prompts import Brand, Idea, research_prompt
from alchemy.content.research_scores import ResearchScores, research_scores
from alchemy.content.schemas import RESEARCH_MODELS
from alchemy.errors import PermanentError
from alchemy.handlers.common import (
    check_storable,
    mark_dead,
    mark_row,
    run_work,
    str_field,
    uuid_field,
)
from alchemy.paid.piece import Piece
from alchemy.providers.base import TEXT_PROVIDERS, TextRequest
from alchemy.providers.registry import choose_text
from alchemy.providers.structured import Structured, generate_structured, strict_schema
from alchemy.queue.job import Death, Job
from alchemy.services import Services, current_services

log = structlog.get_logger("alchemy.handlers.research")

REQUIRES: Final = ("postgres",)
TYPES: Final = ("keywords", "competitors", "trends", "full")
SECTIONS: Final = {
    "keywords": ("keywords",),
    "competitors": ("competitors", "saturation"),
    "trends": ("trends",),
}

LOAD_IDEA = """
SELECT i.id, i.brand_id, i.title, i.description, i.keywords, i.research,
       b.name, b.voice, b.tone, b.audience, b.guidelines, b.banned_phrases,
       b.default_provider, b.default_model
FROM ideas i JOIN brands b ON b.id = i.brand_id
WHERE i.id = $1
"""
MARK_RESEARCHING = """
UPDATE ideas SET status = 'researching', research_job_id = $2, error = NULL,
    error_detail = NULL, updated_at = now()
WHERE id = $1
"""
# A failure of this job: not over another job's run in progress.
MARK_FAILED = """
UPDATE ideas SET status = 'failed', error = $2, error_detail = $3, updated_at = now()
WHERE id = $1
  AND (status <> 'researching' OR research_job_id IS NULL OR research_job_id = $4)
"""
MARK_FAILED_BY_ENGINE = """
UPDATE ideas SET status = 'failed', error = $2, error_detail = $3, updated_at = now()
WHERE research_job_id = $1 AND status = 'researching'
"""
# This job's run, when a run before this one saved it.
SAVED_RUN = "SELECT scores FROM research_runs WHERE job_id = $1"
INSERT_RUN = """
INSERT INTO research_runs (idea_id, research_type, result, scores, provider, model,
                           input_tokens, output_tokens, job_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (job_id) DO NOTHING
RETURNING id
"""
UPDATE_IDEA = """
UPDATE ideas
SET research = $2, virality_score = $3, relevance_score = $4, competition_score = $5,
    researched_at = now(), status = 'researched', error = NULL, error_detail = NULL,
    updated_at = now()
WHERE id = $1
"""


@dataclass(frozen=True, slots=True)
class ResearchJob:
    idea_id: uuid.UUID
    type: str
    provider: str | None
    model: str | None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ResearchJob:
        idea_id = uuid_field(data, "idea_id")
        check_storable(data)
        research_type = str_field(data, "type", TYPES)
        if idea_id is None or research_type is None:
            raise PermanentError(f"job data needs 'type': one of {', '.join(TYPES)}")
        return cls(
            idea_id,
            research_type,
            str_field(data, "provider", TEXT_PROVIDERS),
            str_field(data, "model"),
        )


async def handle(job: Job) -> dict[str, Any] | None:
    """Steps reported: loaded, prompt built, provider called, saved. Returns the idea's id,
    the research type, its scores (virality, relevance, competition and their parts), the
    provider and model."""
    services = current_services()
    idea_id = uuid_field(job.data, "idea_id")
    return await run_work(
        lambda: run_research(job, services), mark_row(MARK_FAILED, idea_id, job.id)
    )


async def on_dead(job: Job, death: Death) -> None:
    """The engine gave the job up (attempts spent, cancelled at the queue timeout on its
    last attempt, poison...): the idea it left ``researching`` is ``failed``."""
    await mark_dead(job, death, MARK_FAILED_BY_ENGINE)


async def warm() -> None:
    """Before the first job: the text providers' SDK clients, the reply schemas, the
    database pool and, on each of its connections, this module's SQL."""
    await current_services().warm(text=True, statements_of=[__name__])
    for model in RESEARCH_MODELS.values():
        strict_schema(model)


async def run_research(job: Job, services: Services) -> dict[str, Any]:
    request = ResearchJob.parse(job.data)
    work_key = f"research:{request.idea_id}:{request.type}"
    done: dict[str, Any] = {"idea_id": str(request.idea_id), "research_type": request.type}
    async with services.paid.piece(job, work_key) as piece:
        db = await piece.db()  # until the provider call: after it, the commit takes its own
        saved = await db.fetchrow(SAVED_RUN, job.id)
        if saved is not None:
            log.info("research_already_saved", idea_id=str(request.idea_id))
            return {**done, "scores": saved["scores"], "already_saved": True}
        row = await db.fetchrow(LOAD_IDEA, request.idea_id)
        if row is None:
            raise PermanentError(f"idea {request.idea_id} not found")
        await job.progress(0.1, step="loaded")
        piece.brand_id = row["brand_id"]
        await db.execute(MARK_RESEARCHING, request.idea_id, job.id)
        choice = choose_text(
            [
                ("job", {"provider": request.provider, "model": request.model}),
                ("brand", {"provider": row["default_provider"], "model": row["default_model"]}),
            ],
            services.config.providers,
        )
        brand = Brand(
            row["name"],
            row["voice"],
            row["tone"],
            row["audience"],
            row["guidelines"],
            tuple(row["banned_phrases"] or ()),
        )
        idea = Idea(row["title"], row["description"], tuple(row["keywords"] or ()))
        system, prompt = research_prompt(brand, idea, request.type)
        text_request = TextRequest(
            system, prompt, RESEARCH_MODELS[request.type], choice.model, subject=idea.title
        )
        provider = piece.text(services.providers.text(choice.provider))
        await job.progress(0.3, step="prompt built")
        result = await generate_structured(provider, text_request)
        await job.progress(0.7, step="provider called")
        scores = await save(piece, job, request, result, idea.keywords)
        await job.progress(0.9, step="saved")
    log.info("research_saved", idea_id=str(request.idea_id), **scores.to_json())
    return {
        **done,
        "scores": scores.to_json(),
        "provider": result.provider,
        "model": result.model,
        "already_saved": False,
    }


def sections_of(research_type: str, value: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The research JSON sections a reply fills (``full`` fills all three)."""
    names = list(SECTIONS) if research_type == "full" else [research_type]
    return {name: {key: value[key] for key in SECTIONS[name]} for name in names}


def merge_research(
    current: Mapping[str, Any],
    research_type: str,
    value: Mapping[str, Any],
    stamp: Mapping[str, Any],
) -> dict[str, Any]:
    merged = dict(current)
    for name, data in sections_of(research_type, value).items():
        merged[name] = {"data": data, **stamp}
    return merged


async def save(
    piece: Piece,
    job: Job,
    request: ResearchJob,
    result: Structured[Any],
    idea_keywords: tuple[str, ...],
) -> ResearchScores:
    value = result.value.model_dump()
    stamp = {
        "researched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "provider": result.provider,
        "model": result.model,
        "job_id": job.id,
    }
    async with piece.commit() as conn:
        current = await conn.fetchval(
            "SELECT research FROM ideas WHERE id = $1 FOR UPDATE", request.idea_id
        )
        if current is None:
            raise PermanentError(f"idea {request.idea_id} was deleted")
        merged = merge_research(current, request.type, value, stamp)
        scores = research_scores(merged, idea_keywords)
        inserted = await conn.fetchval(
            INSERT_RUN,
            request.idea_id,
            request.type,
            value,
            scores.to_json(),
            result.provider,
            result.model,
            result.usage.input_tokens,
            result.usage.output_tokens,
            job.id,
        )
        if inserted is None:  # a concurrent run of this job saved first
            return scores
        await conn.execute(
            UPDATE_IDEA,
            request.idea_id,
            merged,
            scores.virality,
            scores.relevance,
            scores.competition,
        )
    return scores

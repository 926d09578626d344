"""GET /agents: the agents' slugs and names, for choosing whose boot bundle to preview."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from knowledge.agents.roster import list_agents
from knowledge.api.deps import Conn

router = APIRouter(tags=["agents"])


class AgentPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    slug: str
    name: str


@router.get(
    "/agents",
    response_model=list[AgentPublic],
    summary="List agents",
    description="Every agent's slug and name, ordered by slug.",
)
def get_agents(conn: Conn) -> list[AgentPublic]:
    return [AgentPublic.model_validate(a) for a in list_agents(conn)]

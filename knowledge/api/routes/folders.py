"""/document-folders and /asset-folders: the two folder trees, with the same operations.

The tree is written as JSON by `_tree_json`, level by level without recursion: a tree stored
deeper than the folder depth limit (before it existed) must still be readable, and pydantic,
json and orjson all recurse once per level and fail a few hundred levels down.

The writes take their connection in the route's own thread (`_connection`), not from the
`Conn` dependency: changes to one tree wait for each other's lock, and a burst of them larger
than the thread pool would otherwise hold every thread waiting for a connection while the
requests that hold connections wait for a thread to finish in (503 after 5 s).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from knowledge.api.body import CheckedBodyRoute
from knowledge.api.deps import ReadConn
from knowledge.api.fields import name
from knowledge.api.schemas import NotNull
from knowledge.db.pools import pooled_connection
from knowledge.store.folders import (
    MAX_FOLDER_DEPTH,
    MAX_FOLDER_NAME_CHARS,
    FolderNode,
    FolderTree,
    create_folder,
    delete_folder,
    folder_tree,
    get_folder,
    update_folder,
)
from knowledge.store.items import Kind

router = APIRouter(route_class=CheckedBodyRoute)
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

NAME_RULE = (
    f"1..{MAX_FOLDER_NAME_CHARS} characters, not blank, no '/' and no control "
    "characters; unique among its siblings ignoring case (409 otherwise)."
)
DEPTH_RULE = (
    f"Folders nest at most {MAX_FOLDER_DEPTH} levels (a top-level folder is level 1); "
    "a create or move that would go deeper is a 422 naming parent_id."
)


class FolderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description=NAME_RULE, json_schema_extra=name(MAX_FOLDER_NAME_CHARS, also="/"))
    parent_id: UUID | None = Field(None, description="The parent folder; null: at the root.")


class FolderUpdate(NotNull):
    """Rename (name), move (parent_id; null moves to the root), or both."""

    model_config = ConfigDict(extra="forbid")
    not_null = ("name",)

    name: str | None = Field(None, description=NAME_RULE, json_schema_extra=name(MAX_FOLDER_NAME_CHARS, also="/"))
    parent_id: UUID | None = Field(
        None, description="The new parent; null: the root. Moving a folder into its own subtree is a 409."
    )


class FolderPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: UUID
    parent_id: UUID | None
    name: str
    path: str = Field(description="'/Operations/Sales': the names from the root down.")
    position: int
    created_at: datetime
    updated_at: datetime


class FolderNodeFields(BaseModel):
    """A tree node without its children: what `_tree_json` serialises for each node."""

    model_config = ConfigDict(from_attributes=True)

    id: UUID
    parent_id: UUID | None
    name: str
    path: str
    position: int
    item_count: int = Field(description="Unarchived documents (or assets) directly in this folder.")
    total_item_count: int = Field(description="The same, in this folder and all its subfolders.")


class FolderNodePublic(FolderNodeFields):
    children: list[FolderNodePublic]


class FolderTreePublic(BaseModel):
    data: list[FolderNodePublic] = Field(description="The top-level folders, each with its subtree.")
    count: int = Field(description="Folders in the whole tree.")
    unfiled_count: int = Field(description="Unarchived items in no folder.")


class FolderDeletionPublic(BaseModel):
    folders_deleted: int = Field(description="The folder and all its subfolders.")
    items_moved_to_root: int = Field(description="Items that were in them, now in no folder.")


def _tree_json(found: FolderTree) -> bytes:
    """`found` as the JSON of FolderTreePublic, built with an explicit stack so that no depth
    of nesting recurses: each node is its FolderNodeFields JSON with `"children":[` appended
    in place of the closing brace, and `]}` pushed to close it after its children."""
    out = ['{"data":[']
    stack: list[tuple[FolderNode, bool] | str] = [(node, i == 0) for i, node in reversed(list(enumerate(found.roots)))]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        node, first = item
        if not first:
            out.append(",")
        out.append(FolderNodeFields.model_validate(node).model_dump_json()[:-1])
        out.append(',"children":[')
        stack.append("]}")
        stack.extend((child, i == 0) for i, child in reversed(list(enumerate(node.children))))
    out.append(f'],"count":{found.count},"unfiled_count":{found.unfiled_count}}}')
    return "".join(out).encode()


def _routes(tree: Kind, prefix: str, items: str) -> None:
    def route(method: str, path: str, name: str, summary: str, **more: Any) -> Callable[[Endpoint], Endpoint]:
        """A decorator adding its endpoint for `method` at `prefix + path`, in the tree's group,
        named `name` (the start of its operation id)."""
        tags: list[str | Enum] = [prefix.strip("/")]
        return router.api_route(prefix + path, methods=[method], tags=tags, name=name, summary=summary, **more)

    @route(
        "POST",
        "",
        f"create_{tree}_folder",
        f"Create a {tree} folder",
        status_code=status.HTTP_201_CREATED,
        response_model=FolderPublic,
        description=f"Name: {NAME_RULE} {DEPTH_RULE} An unknown parent_id is a 404.",
    )
    def create(body: FolderCreate, request: Request) -> FolderPublic:
        with pooled_connection(request.app.state.pool) as conn:
            return FolderPublic.model_validate(create_folder(conn, tree, name=body.name, parent_id=body.parent_id))

    @route(
        "GET",
        "",
        f"{tree}_folder_tree",
        f"The {tree} folder tree",
        response_model=FolderTreePublic,
        description=f"Nested folders with counts of the unarchived {items} in each, however deep the tree is.",
    )
    def tree_(conn: ReadConn) -> Response:
        return Response(_tree_json(folder_tree(conn, tree)), media_type="application/json")

    @route("GET", "/{folder_id}", f"get_{tree}_folder", f"Get a {tree} folder", response_model=FolderPublic)
    def get(folder_id: UUID, conn: ReadConn) -> FolderPublic:
        return FolderPublic.model_validate(get_folder(conn, tree, folder_id))

    @route(
        "PATCH",
        "/{folder_id}",
        f"update_{tree}_folder",
        f"Rename or move a {tree} folder",
        response_model=FolderPublic,
        description=f"Name: {NAME_RULE} A move into the folder's own subtree is a 409 naming "
        f"both folders; an unknown parent_id is a 404. {DEPTH_RULE} A move "
        "that leaves the moved folders no deeper than they were is allowed.",
    )
    def update(folder_id: UUID, body: FolderUpdate, request: Request) -> FolderPublic:
        with pooled_connection(request.app.state.pool) as conn:
            changed = update_folder(conn, tree, folder_id, **body.model_dump(exclude_unset=True))
            return FolderPublic.model_validate(changed)

    @route(
        "DELETE",
        "/{folder_id}",
        f"delete_{tree}_folder",
        f"Delete a {tree} folder",
        response_model=FolderDeletionPublic,
        description=f"Deletes the folder and its subfolders; the {items} in them move to "
        "the root (nothing is lost). Says how many of each.",
    )
    def delete(folder_id: UUID, request: Request) -> FolderDeletionPublic:
        with pooled_connection(request.app.state.pool) as conn:
            done = delete_folder(conn, tree, folder_id)
        return FolderDeletionPublic(folders_deleted=done.folders_deleted, items_moved_to_root=done.items_moved_to_root)


_routes("document", "/document-folders", "documents")
_routes("asset", "/asset-folders", "assets")

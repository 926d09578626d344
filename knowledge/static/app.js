// The operator's search page: plain JS, no framework, no build step.
// Safety rule: text from the service (titles, tags, paths, document text) is inserted with
// textContent or text nodes only. The one innerHTML is the search snippet, and only after
// every "<" that does not open <mark> or </mark> has been escaped (safeSnippet). Documents
// are rendered by markdown.js (window.hqMarkdown), which builds DOM nodes from text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    q: $("q"), mode: $("mode"), tag: $("filter-tag"), folder: $("filter-folder"),
    kind: $("filter-kind"), archived: $("filter-archived"),
    results: $("results"), state: $("results-state"),
    doc: $("doc"), docTitle: $("doc-title"), docBody: $("doc-body"), docStatus: $("doc-status"),
    docError: $("doc-error"), retrySlot: $("doc-retry-slot"), docClose: $("doc-close"),
    strip: $("status-strip"),
    bootAgent: $("boot-agent"), bootItems: $("boot-items"), bootTokens: $("boot-tokens"),
    bootState: $("boot-state"),
    keyForm: $("key-form"), keyInput: $("api-key"), keyState: $("key-state"), keyForget: $("key-forget"),
  };
  const HINT = "Type to search. Press / to focus the box, ↑ ↓ to move, Enter to open, Esc to clear.";
  const DEBOUNCE_MS = 50;
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const OPTIONS = {
    mode: ["hybrid", "semantic", "keyword"], kind: ["", "document", "asset"],
    archived: ["false", "true", "any"],
  };

  const search = { seq: 0, controller: null, timer: 0, hits: [], selected: -1 };
  // The open document or asset: {id, kind, passage, meta, seq}; null when the panel is closed.
  let open = null;
  let docSeq = 0;
  let docPoll = 0;

  // ---- HTTP ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function detailMessage(detail) {
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {  // FastAPI's request validation errors
      return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    }
    return null;
  }

  /** The JSON body of a GET (or of `init`); ApiError with the server's message otherwise.
   * A network failure becomes ApiError(0, "Cannot reach the service"). */
  async function api(path, init = {}) {
    let response;
    const headers = { Accept: "application/json" };
    const key = storedKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "Cannot reach the service");
    }
    if (!response.ok) {
      let message = null;
      try { message = detailMessage((await response.json()).detail); } catch { /* not JSON */ }
      if (!message || response.status === 502 || response.status === 504) {
        message = response.status >= 500 ? "Cannot reach the service"
          : `The service answered ${response.status}`;
      }
      if (response.status === 401) askForKey(message);
      throw new ApiError(response.status, message);
    }
    return response.json();
  }

  // ---- API key -----------------------------------------------------------------------------
  // A service that requires keys answers 401: the page then asks for one and keeps it in this
  // browser's localStorage (sent only to this origin, as `Authorization: Bearer`).

  const KEY_STORE = "hq-knowledge-api-key";

  function storedKey() {
    try { return localStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
  }

  function askForKey(message) {
    el.keyForm.hidden = false;
    el.keyState.textContent = storedKey() ? `The key was refused: ${message}` : message;
    if (document.activeElement !== el.q) el.keyInput.focus();
  }

  function useKey(event) {
    event.preventDefault();
    const key = el.keyInput.value.trim();
    if (!key) return;
    try { localStorage.setItem(KEY_STORE, key); } catch { /* private mode: this page only */ }
    location.reload();
  }

  function forgetKey() {
    try { localStorage.removeItem(KEY_STORE); } catch { /* nothing stored */ }
    location.reload();
  }

  // ---- URL state ---------------------------------------------------------------------------

  function pick(value, allowed, fallback) {
    return allowed.includes(value) ? value : fallback;
  }

  /** Select `value` in `select`, adding an option for it when the list does not have it yet
   * (the tag and folder lists load after the URL is read). */
  function selectValue(select, value, label) {
    if (!value) { select.value = ""; return; }
    if (![...select.options].some((o) => o.value === value)) {
      select.append(new Option(label || value, value));
    }
    select.value = value;
  }

  function readUrl() {
    const p = new URLSearchParams(location.search);
    el.q.value = p.get("q") || "";
    el.mode.value = pick(p.get("mode"), OPTIONS.mode, "hybrid");
    el.kind.value = pick(p.get("kind") || "", OPTIONS.kind, "");
    el.archived.value = pick(p.get("archived"), OPTIONS.archived, "false");
    selectValue(el.tag, p.get("tag") || "");
    const folder = p.get("folder") || "";
    selectValue(el.folder, UUID_RE.test(folder) ? folder : "");
    const doc = p.get("doc") || "";
    return UUID_RE.test(doc) ? { id: doc, kind: p.get("dockind") === "asset" ? "asset" : "document" } : null;
  }

  function writeUrl() {
    const p = new URLSearchParams();
    if (el.q.value) p.set("q", el.q.value);
    if (el.mode.value !== "hybrid") p.set("mode", el.mode.value);
    if (el.tag.value) p.set("tag", el.tag.value);
    if (el.folder.value) p.set("folder", el.folder.value);
    if (el.kind.value) p.set("kind", el.kind.value);
    if (el.archived.value !== "false") p.set("archived", el.archived.value);
    if (open) {
      p.set("doc", open.id);
      if (open.kind === "asset") p.set("dockind", "asset");
    }
    const query = p.toString();
    history.replaceState(null, "", query ? `?${query}` : location.pathname);
  }

  // ---- Search ------------------------------------------------------------------------------

  function setState(state, message) {
    el.state.dataset.state = state;
    el.state.textContent = message;
  }

  function scheduleSearch() {
    clearTimeout(search.timer);
    search.timer = setTimeout(runSearch, DEBOUNCE_MS);
  }

  async function runSearch() {
    clearTimeout(search.timer);
    writeUrl();
    const query = el.q.value;
    const seq = ++search.seq;  // any response of an earlier request is now stale
    if (search.controller) search.controller.abort();
    search.controller = null;
    if (!query.trim()) {
      renderHits([]);
      setState("idle", HINT);
      return;
    }
    const controller = new AbortController();
    search.controller = controller;
    setState("loading", "Searching…");
    el.results.setAttribute("aria-busy", "true");
    const params = new URLSearchParams({ q: query, limit: "20", mode: el.mode.value,
                                         archived: el.archived.value });
    if (el.tag.value) params.append("tags_any", el.tag.value);
    if (el.folder.value) params.set("folder", el.folder.value);
    if (el.kind.value) params.set("kind", el.kind.value);
    try {
      const body = await api(`/search?${params}`, { signal: controller.signal });
      if (seq !== search.seq) return;
      renderHits(body.hits);
      if (body.hits.length) {
        setState("results", `${body.hits.length} result${body.hits.length === 1 ? "" : "s"}`);
      } else {
        setState("empty", `No results for “${query}”`);
      }
      markRendered(query, body.hits.length);
      attachPassage();
    } catch (e) {
      if (e.name === "AbortError" || seq !== search.seq) return;
      renderHits([]);
      setState("error", e instanceof ApiError ? e.message : "Cannot reach the service");
    } finally {
      if (seq === search.seq) el.results.removeAttribute("aria-busy");
    }
  }

  /** For the latency measurement: when the results are on screen. */
  function markRendered(query, count) {
    requestAnimationFrame(() => setTimeout(() => {
      window.hqLastRender = { query, at: performance.now(), count };
    }, 0));
  }

  /** The server's snippet (HTML-escaped text with <mark>) with anything else neutralised:
   * every "<" that does not start <mark> or </mark> becomes "&lt;". */
  function safeSnippet(html) {
    return String(html || "").replace(/<(?!\/?mark>)/g, "&lt;");
  }

  function formatTime(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso || "")
      : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  function span(className, text) {
    const node = document.createElement("span");
    node.className = className;
    node.textContent = text;
    return node;
  }

  function renderHits(hits) {
    search.hits = hits;
    search.selected = -1;
    el.q.removeAttribute("aria-activedescendant");
    el.q.setAttribute("aria-expanded", String(hits.length > 0));
    el.results.replaceChildren(...hits.map((hit, i) => {
      const li = document.createElement("li");
      li.className = "hit";
      li.id = `hit-${i}`;
      li.dataset.id = hit.id;
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", "false");

      const title = document.createElement("button");
      title.type = "button";
      title.className = "hit-title";
      title.textContent = hit.title;

      const meta = document.createElement("div");
      meta.className = "hit-meta";
      const tags = document.createElement("span");
      tags.className = "hit-tags";
      for (const tag of hit.tags || []) tags.append(span("tag", tag));
      const updated = document.createElement("time");
      updated.className = "hit-updated";
      updated.dateTime = hit.updated_at;
      updated.textContent = formatTime(hit.updated_at);
      meta.append(span("hit-kind", hit.kind), span("hit-path", hit.folder_path), updated, tags);

      const snippet = document.createElement("p");
      snippet.className = "hit-snippet";
      snippet.innerHTML = safeSnippet(hit.snippet);

      li.append(title, meta, snippet);
      li.addEventListener("click", () => { select(i); openHit(hit); });
      return li;
    }));
  }

  function select(index) {
    const items = el.results.children;
    if (!items.length) return;
    search.selected = Math.max(0, Math.min(items.length - 1, index));
    [...items].forEach((li, i) => li.setAttribute("aria-selected", String(i === search.selected)));
    const chosen = items[search.selected];
    el.q.setAttribute("aria-activedescendant", chosen.id);
    if (el.results.contains(document.activeElement)) chosen.querySelector(".hit-title").focus();
    chosen.scrollIntoView({ block: "nearest" });
  }

  // ---- Document panel ----------------------------------------------------------------------

  function openHit(hit) {
    const passage = hit.passages && hit.passages.length ? hit.passages[0].content : null;
    openDoc(hit.id, hit.kind === "asset" ? "asset" : "document", passage);
  }

  function assetMarkdown(asset) {
    const parts = [];
    if (asset.description) parts.push(asset.description);
    if (asset.url) parts.push(`[${asset.url}](${asset.url})`);
    if (asset.content_text) parts.push(asset.content_text);
    return parts.join("\n\n");
  }

  async function openDoc(id, kind, passage) {
    const seq = ++docSeq;
    open = { id, kind, passage, meta: null };
    writeUrl();
    el.doc.hidden = false;
    el.doc.setAttribute("aria-busy", "true");
    el.docTitle.textContent = "Loading…";
    el.docBody.replaceChildren();
    showStatus(null);
    const base = kind === "asset" ? `/assets/${id}` : `/documents/${id}`;
    try {
      const meta = await api(base);
      let markdown;
      let title;
      if (kind === "asset") {
        title = meta.name;
        markdown = assetMarkdown(meta);
      } else {
        title = meta.title;
        try {
          markdown = (await api(`${base}/markdown`)).markdown;
        } catch (e) {
          if (e.status === 0) throw e;
          markdown = meta.content_text || "";  // not renderable as markdown: show its text
        }
        // The markdown opens with "# <title>", already the panel's heading.
        const head = `# ${title}`;
        if (markdown.startsWith(head)) markdown = markdown.slice(head.length).replace(/^\s*\n/, "");
      }
      if (seq !== docSeq) return;
      open.meta = meta;
      el.docTitle.textContent = title;
      el.docBody.replaceChildren(window.hqMarkdown.render(markdown));
      showStatus(meta);
      highlightPassage();
      if (window.matchMedia("(max-width: 900px)").matches) {
        if (!el.docBody.querySelector(".passage-hit")) el.doc.scrollIntoView({ block: "start" });
      }
    } catch (e) {
      if (seq !== docSeq) return;
      el.docTitle.textContent = "Cannot open this item";
      const p = document.createElement("p");
      p.className = "doc-failure";
      p.textContent = e instanceof ApiError ? e.message : "Cannot reach the service";
      el.docBody.replaceChildren(p);
    } finally {
      if (seq === docSeq) el.doc.removeAttribute("aria-busy");
    }
  }

  function closeDoc() {
    docSeq++;
    open = null;
    clearTimeout(docPoll);
    el.doc.hidden = true;
    el.docBody.replaceChildren();
    el.docTitle.textContent = "";
    writeUrl();
  }

  /** After a reload with ?doc=..., the matched passage is known once the search has answered. */
  function attachPassage() {
    if (!open || open.passage) return;
    const hit = search.hits.find((h) => h.id === open.id);
    if (hit && hit.passages && hit.passages.length) {
      open.passage = hit.passages[0].content;
      if (open.meta) highlightPassage();
    }
  }

  function showStatus(meta) {
    clearTimeout(docPoll);
    el.retrySlot.replaceChildren();
    el.docError.textContent = "";
    el.docError.hidden = true;
    if (!meta) { el.docStatus.textContent = ""; el.docStatus.dataset.status = ""; return; }
    const status = meta.embedding_status;
    el.docStatus.textContent = status;
    el.docStatus.dataset.status = status;
    if (status === "failed") {
      el.docError.textContent = meta.embedding_error || "no error recorded";
      el.docError.hidden = false;
      const retry = document.createElement("button");
      retry.type = "button";
      retry.id = "retry";
      retry.textContent = "Retry";
      retry.addEventListener("click", () => retryEmbedding(retry));
      el.retrySlot.append(retry);
    } else if (status === "pending" || status === "processing") {
      docPoll = setTimeout(refreshStatus, 3000);
    }
  }

  async function refreshStatus() {
    if (!open) return;
    const { id, kind } = open;
    const seq = docSeq;
    try {
      const meta = await api(kind === "asset" ? `/assets/${id}` : `/documents/${id}`);
      if (seq === docSeq) { open.meta = meta; showStatus(meta); }
    } catch {
      if (seq === docSeq) docPoll = setTimeout(refreshStatus, 10000);
    }
  }

  async function retryEmbedding(button) {
    if (!open) return;
    const { id, kind } = open;
    const seq = docSeq;
    button.disabled = true;
    button.textContent = "Retrying…";
    try {
      const meta = await api(`/${kind === "asset" ? "assets" : "documents"}/${id}/retry`,
                             { method: "POST" });
      if (seq === docSeq) { open.meta = meta; showStatus(meta); }
    } catch (e) {
      if (seq !== docSeq) return;
      button.disabled = false;
      button.textContent = "Retry";
      el.docError.textContent = e instanceof ApiError ? e.message : "Cannot reach the service";
      el.docError.hidden = false;
    }
  }

  // ---- Passage highlight -------------------------------------------------------------------

  /** Text as compared for containment: markdown punctuation and case dropped, spaces collapsed. */
  function normalise(text) {
    return String(text)
      .replace(/!?\[([^\]]*)\]\([^)]*\)/g, "$1")
      .toLowerCase()
      .replace(/[#*_`>|~=:\-]+/g, " ")
      .replace(/^\s*\d+[.)]\s/gm, " ")
      .replace(/\s+/g, " ")
      .trim();
  }

  function highlightPassage() {
    for (const old of el.docBody.querySelectorAll(".passage-hit")) old.classList.remove("passage-hit");
    if (!open || !open.passage) return;
    const blocks = [...el.docBody.children];
    const texts = blocks.map((b) => normalise(b.textContent));
    const find = (needle) => (needle.length < 8 ? -1 : texts.findIndex((t) => t.includes(needle)));
    // The passage's first ~80 characters; when they span blocks (a heading line, then text),
    // its first paragraph that is not a heading, then any of its paragraphs.
    let index = find(normalise(open.passage).slice(0, 80).trim());
    if (index < 0) {
      const paragraphs = open.passage.split(/\n\s*\n|\n(?=#)/).filter((p) => p.trim());
      const ordered = [...paragraphs.filter((p) => !/^\s*#/.test(p)), ...paragraphs];
      for (const paragraph of ordered) {
        index = find(normalise(paragraph).slice(0, 80).trim());
        if (index >= 0) break;
      }
    }
    if (index < 0) return;
    const block = blocks[index];
    block.classList.add("passage-hit");
    block.scrollIntoView({ block: "center" });
  }

  // ---- Filters, status strip, boot preview -----------------------------------------------

  async function loadTags() {
    try {
      const body = await api("/tags");
      const current = el.tag.value;
      el.tag.replaceChildren(new Option("any tag", ""),
        ...body.data.map((t) => new Option(`${t.tag} (${t.documents + t.assets})`, t.tag)));
      selectValue(el.tag, current);
    } catch { /* the filter keeps what it has; the status strip says the service is down */ }
  }

  async function loadFolders() {
    try {
      const body = await api("/document-folders");
      const options = [new Option("any folder", "")];
      const walk = (nodes) => {
        for (const node of nodes) {
          options.push(new Option(node.path, node.id));
          walk(node.children || []);
        }
      };
      walk(body.data);
      const current = el.folder.value;
      el.folder.replaceChildren(...options);
      selectValue(el.folder, current);
    } catch { /* as for tags */ }
  }

  async function refreshStrip() {
    try {
      const s = await api("/status");
      const values = { documents: s.documents, passages: s.passages, queue: s.queue,
                       model: s.active_model || "none", keyword: s.keyword_path };
      for (const [name, value] of Object.entries(values)) {
        el.strip.querySelector(`[data-stat="${name}"]`).textContent = String(value);
      }
      el.strip.classList.remove("down");
      el.strip.removeAttribute("title");
    } catch (e) {
      el.strip.classList.add("down");
      el.strip.title = e instanceof ApiError ? e.message : "Cannot reach the service";
    }
  }

  async function loadAgents() {
    try {
      const agents = await api("/agents");
      const current = el.bootAgent.value;
      el.bootAgent.replaceChildren(new Option("none", ""),
        ...agents.map((a) => new Option(`${a.name} (${a.slug})`, a.slug)));
      el.bootAgent.value = current;
    } catch (e) {
      el.bootState.textContent = e instanceof ApiError ? e.message : "Cannot reach the service";
    }
  }

  let bootSeq = 0;

  async function showBoot() {
    const seq = ++bootSeq;
    const slug = el.bootAgent.value;
    el.bootItems.replaceChildren();
    el.bootTokens.textContent = "0";
    if (!slug) { el.bootState.textContent = ""; return; }
    el.bootState.textContent = "Loading…";
    try {
      const bundle = await api(`/boot/${encodeURIComponent(slug)}`);
      if (seq !== bootSeq) return;
      el.bootItems.replaceChildren(...bundle.items.map((item) => {
        const li = document.createElement("li");
        li.className = "boot-item";
        li.dataset.id = item.id;
        li.append(span("boot-item-title", item.title),
                  span("boot-item-meta", `${item.kind} · ${item.folder_path} · ${item.tokens} tokens`
                                         + (item.truncated ? " · cut" : "")));
        return li;
      }));
      el.bootTokens.textContent = String(bundle.tokens);
      const omitted = bundle.omitted.length ? ` ${bundle.omitted.length} left out.` : "";
      el.bootState.textContent = bundle.items.length
        ? `${bundle.items.length} item${bundle.items.length === 1 ? "" : "s"}.${omitted}`
        : `Nothing is tagged boot:all or boot:${slug}.${omitted}`;
    } catch (e) {
      if (seq !== bootSeq) return;
      el.bootState.textContent = e instanceof ApiError ? e.message : "Cannot reach the service";
    }
  }

  // ---- Keyboard ----------------------------------------------------------------------------

  function typingIn(target) {
    return target instanceof HTMLElement
      && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
  }

  function onKeydown(event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
    const target = event.target;
    const inBox = target === el.q;
    if (event.key === "/" && !typingIn(target)) {
      event.preventDefault();
      el.q.focus();
      el.q.select();
    } else if (event.key === "Escape") {
      event.preventDefault();
      if (open) {
        closeDoc();
        el.q.focus();
      } else if (el.q.value) {
        el.q.value = "";
        el.q.focus();
        runSearch();
      }
    } else if ((event.key === "ArrowDown" || event.key === "ArrowUp") && search.hits.length
               && (inBox || target === document.body || el.results.contains(target))) {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      select(search.selected < 0 ? (step > 0 ? 0 : search.hits.length - 1) : search.selected + step);
    } else if (event.key === "Enter" && inBox && search.selected >= 0) {
      event.preventDefault();
      openHit(search.hits[search.selected]);
    }
  }

  // ---- Start -------------------------------------------------------------------------------

  function start() {
    const doc = readUrl();
    el.q.addEventListener("input", () => {
      window.hqLastInputAt = performance.now();
      scheduleSearch();
    });
    for (const select of [el.mode, el.tag, el.folder, el.kind, el.archived]) {
      select.addEventListener("change", runSearch);
    }
    el.docClose.addEventListener("click", () => { closeDoc(); el.q.focus(); });
    el.bootAgent.addEventListener("change", showBoot);
    document.addEventListener("keydown", onKeydown);
    el.keyForm.addEventListener("submit", useKey);
    el.keyForget.addEventListener("click", forgetKey);
    el.keyForget.hidden = !storedKey();

    loadTags();
    loadFolders();
    loadAgents();
    refreshStrip();
    setInterval(refreshStrip, 10000);
    if (el.q.value) runSearch(); else setState("idle", HINT);
    if (doc) openDoc(doc.id, doc.kind, null);
  }

  start();
})();

// A small, safe markdown renderer for the document panel: window.hqMarkdown.render(text)
// returns a DocumentFragment. It builds DOM nodes and puts every piece of text in as a text
// node, so nothing in a document is ever parsed as HTML; links keep only http(s) hrefs.
// Handles headings, paragraphs, bold/italic, inline code, fenced code, bullet and numbered
// lists (nested by indentation), tables, block quotes and rules.
"use strict";

(() => {
  const FENCE = /^\s{0,3}(`{3,}|~{3,})\s*([\w+-]*)/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
  const RULE = /^\s{0,3}([-*_])(?:\s*\1){2,}\s*$/;
  const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const TABLE_SEP = /^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$/;
  const QUOTE = /^\s{0,3}>\s?(.*)$/;

  function renderMarkdown(markdown) {
    const fragment = document.createDocumentFragment();
    const lines = String(markdown).replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    const startsBlock = (line, next) => FENCE.test(line) || HEADING.test(line) || RULE.test(line)
      || LIST_ITEM.test(line) || QUOTE.test(line) || isTableStart(line, next);
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) { i++; continue; }
      let m;
      if ((m = FENCE.exec(line))) {
        const fence = m[1];
        const body = [];
        i++;
        while (i < lines.length && !(lines[i].trim().startsWith(fence[0].repeat(fence.length))
                                     && !lines[i].trim().slice(fence.length).trim())) {
          body.push(lines[i]);
          i++;
        }
        i++;  // the closing fence
        const pre = document.createElement("pre");
        const code = document.createElement("code");
        if (m[2]) code.className = `language-${m[2]}`;
        code.textContent = body.join("\n");
        pre.append(code);
        fragment.append(pre);
      } else if ((m = HEADING.exec(line))) {
        const h = document.createElement(`h${Math.min(6, m[1].length + 1)}`);
        h.append(inline(m[2]));
        fragment.append(h);
        i++;
      } else if (RULE.test(line)) {
        fragment.append(document.createElement("hr"));
        i++;
      } else if (isTableStart(line, lines[i + 1])) {
        i = table(lines, i, fragment);
      } else if (LIST_ITEM.test(line)) {
        i = list(lines, i, fragment);
      } else if (QUOTE.test(line)) {
        const body = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) { body.push(m[1]); i++; }
        const quote = document.createElement("blockquote");
        quote.append(renderMarkdown(body.join("\n")));
        fragment.append(quote);
      } else {
        const body = [line.trim()];
        i++;
        while (i < lines.length && lines[i].trim() && !startsBlock(lines[i], lines[i + 1])) {
          body.push(lines[i].trim());
          i++;
        }
        const p = document.createElement("p");
        p.append(inline(body.join(" ")));
        fragment.append(p);
      }
    }
    return fragment;
  }

  function isTableStart(line, next) {
    return line.includes("|") && next !== undefined && next.includes("-") && TABLE_SEP.test(next);
  }

  function cells(line) {
    let row = line.trim();
    if (row.startsWith("|")) row = row.slice(1);
    if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
    return row.split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"));
  }

  function table(lines, i, fragment) {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    const tableEl = document.createElement("table");
    const head = document.createElement("thead");
    const headRow = document.createElement("tr");
    const header = cells(lines[i]);
    for (const c of header) {
      const th = document.createElement("th");
      th.append(inline(c));
      headRow.append(th);
    }
    head.append(headRow);
    const body = document.createElement("tbody");
    i += 2;
    while (i < lines.length && lines[i].trim() && lines[i].includes("|")) {
      const tr = document.createElement("tr");
      const row = cells(lines[i]);
      for (let c = 0; c < header.length; c++) {
        const td = document.createElement("td");
        td.append(inline(row[c] || ""));
        tr.append(td);
      }
      body.append(tr);
      i++;
    }
    tableEl.append(head, body);
    wrap.append(tableEl);
    fragment.append(wrap);
    return i;
  }

  /** A list and its nested lists (by indentation); returns the index after it. */
  function list(lines, i, fragment) {
    const stack = [];  // open lists, outermost first: {indent, ordered, el, lastLi}
    while (i < lines.length) {
      const line = lines[i];
      const m = LIST_ITEM.exec(line);
      if (!m) {
        // An indented continuation line of the last item; anything else ends the list.
        const lastLi = stack.length ? stack[stack.length - 1].lastLi : null;
        if (line.trim() && lastLi && /^\s+/.test(line) && !startsOther(line)) {
          lastLi.append(" ", inline(line.trim()));
          i++;
          continue;
        }
        break;
      }
      const indent = m[1].replace(/\t/g, "    ").length;
      const ordered = /\d/.test(m[2]);
      while (stack.length && indent < stack[stack.length - 1].indent) stack.pop();
      let top = stack[stack.length - 1];
      if (top && indent === top.indent && top.ordered !== ordered) {
        stack.pop();  // "- a" then "1. b": a new list
        top = stack[stack.length - 1];
      }
      if (!top || indent > top.indent) {
        const listEl = document.createElement(ordered ? "ol" : "ul");
        const first = parseInt(m[2], 10);
        if (ordered && first !== 1) listEl.start = first;
        (top && top.lastLi ? top.lastLi : fragment).append(listEl);
        top = { indent, ordered, el: listEl, lastLi: null };
        stack.push(top);
      }
      const li = document.createElement("li");
      li.append(inline(m[3]));
      top.el.append(li);
      top.lastLi = li;
      i++;
      if (i < lines.length && !lines[i].trim()) {
        // A blank line ends the list unless another item follows.
        let j = i;
        while (j < lines.length && !lines[j].trim()) j++;
        if (j < lines.length && LIST_ITEM.test(lines[j])) i = j;
        else break;
      }
    }
    return i;
  }

  function startsOther(line) {
    return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line);
  }

  const INLINE = /`([^`]+)`|\[([^\]]+)\]\(\s*<?((?:[^()\s<>]|\([^()\s]*\))+)>?(?:\s+"[^"]*")?\s*\)|\*\*(.+?)\*\*|__(.+?)__|\*(?=\S)(.+?)\*|(?<![\w])_(?=\S)(.+?)_(?![\w])/g;

  function safeHref(href) {
    try {
      const url = new URL(href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  function inline(text) {
    const fragment = document.createDocumentFragment();
    let last = 0;
    for (const m of text.matchAll(INLINE)) {
      if (m.index > last) fragment.append(text.slice(last, m.index));
      let node;
      if (m[1] !== undefined) {
        node = document.createElement("code");
        node.textContent = m[1];
      } else if (m[2] !== undefined) {
        const href = safeHref(m[3]);
        if (href) {
          node = document.createElement("a");
          node.href = href;
          node.rel = "noopener noreferrer";
          node.target = "_blank";
          node.append(inline(m[2]));
        } else {
          node = inline(m[2]);  // not http(s): the label as text, no link
        }
      } else if (m[4] !== undefined || m[5] !== undefined) {
        node = document.createElement("strong");
        node.append(inline(m[4] ?? m[5]));
      } else {
        node = document.createElement("em");
        node.append(inline(m[6] ?? m[7]));
      }
      fragment.append(node);
      last = m.index + m[0].length;
    }
    if (last < text.length) fragment.append(text.slice(last));
    return fragment;
  }

  window.hqMarkdown = Object.freeze({ render: renderMarkdown });
})();

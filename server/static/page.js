"use strict";
// The simsearch page: search by an image, review duplicate groups (a list, or one group to compare), decide, act and
// undo. Everything it shows comes from this server's API; it never names a path for the server to act on (groups,
// images and resolves are named by their ids).
//
// The token (beyond loopback) comes in the URL's fragment, which is never sent to a server, and travels only in the
// Authorization header. X-Simsearch-Request proves to the server that this page, not a form or an <img> of another
// site, is asking; so images are fetched, and shown from blob: URLs.

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const HEADERS = {"X-Simsearch-Request": "1", ...(token ? {Authorization: "Bearer " + token} : {})};
const PER_PAGE = 100;
const DEFAULT_KEEP = "";  // the server's own keeper rules (`simsearch dedup --keep`'s default)
const RULES = {
  largest: "most pixels", smallest: "fewest pixels", oldest: "oldest", newest: "newest", quality: "JPEG quality",
  "largest-file": "largest file", "smallest-file": "smallest file", "shortest-path": "shortest path",
  "longest-path": "longest path", chosen: "your choice", protected: "in the reference folder", path: "path order",
};
const $ = (id) => document.getElementById(id);

// --- small helpers ---------------------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

/** `text` shortened in its middle to at most `max` characters: a path keeps its start and its file name. */
function middle(text, max) {
  if (!text || text.length <= max) return text || "";
  const kept = max - 1;
  return text.slice(0, Math.ceil(kept / 2)) + "\u2026" + text.slice(text.length - Math.floor(kept / 2));
}

function bytes(size) {
  if (size === null || size === undefined) return "?";
  const units = ["B", "KB", "MB", "GB"];
  let value = size, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return (unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)) + "\u202f" + units[unit];
}

function date(text) {
  return text ? text.slice(0, 16).replace("T", " ") : "?";
}

function rules(decidedBy) {
  return RULES[decidedBy] || decidedBy;
}

/** The cosine similarity of a result: the server's, else from the distance (unit vectors: cos = 1 - d / 2, as
 * retrieval/vectors/unit_distance.py converts it). */
function similarity(item) {
  return item.similarity ?? 1 - item.distance / 2;
}

function plural(count, word, many = word + "s") {
  return `${count.toLocaleString()} ${count === 1 ? word : many}`;
}

// --- the API -----------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function api(path, {signal, method = "GET", json, form} = {}) {
  const options = {method, signal, headers: {...HEADERS}};
  if (json !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(json);
  } else if (form !== undefined) {
    options.body = form;
  }
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) throw new ApiError((body && body.detail) || `${response.status} ${response.statusText}`,
                                       response.status);
  return body;
}

/** One request in flight per view: a new one aborts the one before, whose answer (if it still comes) is dropped. */
class Loader {
  constructor() { this.controller = null; this.serial = 0; }

  /** `task(signal)`'s result as {result}, or null when a newer run superseded it. */
  async run(task) {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    const serial = ++this.serial;
    try {
      const result = await task(controller.signal);
      return serial === this.serial ? {result} : null;
    } catch (error) {
      if (serial !== this.serial || error.name === "AbortError") return null;
      throw error;
    } finally {
      if (serial === this.serial) this.controller = null;
    }
  }
}

// --- images, fetched with the headers and kept as blob: URLs ------------------------------------------------------

const blobs = new Map();
const KEPT_BLOBS = 600;

function imageUrl(path) {
  let url = blobs.get(path);
  if (url === undefined) {
    url = fetch(path, {headers: HEADERS}).then((response) => {
      if (!response.ok) throw new Error(`${response.status}`);
      return response.blob();
    }).then((blob) => URL.createObjectURL(blob));
    url.catch(() => blobs.delete(path));
    blobs.set(path, url);
    while (blobs.size > KEPT_BLOBS) {  // the oldest go (an image already shown stays shown)
      const [oldest, promise] = blobs.entries().next().value;
      blobs.delete(oldest);
      promise.then((gone) => URL.revokeObjectURL(gone), () => {});
    }
  }
  return url;
}

const thumbnail = (imageId) => "/api/thumbnail/" + imageId;
const rendition = (imageId) => "/api/image/" + imageId;

const lazy = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (entry.isIntersecting) {
      lazy.unobserve(entry.target);
      fill(entry.target);
    }
  }
}, {rootMargin: "600px"});

async function fill(img) {
  try {
    img.src = await imageUrl(img.dataset.src);
    if (img.dataset.large) {  // a wide frame: the larger rendition replaces the thumbnail once it is in
      const large = await imageUrl(img.dataset.large);
      if (img.isConnected) img.src = large;
    }
  } catch {
    img.classList.add("missing");
    img.alt = "no longer as indexed";
  }
}

function lazyImage(imageId, alt, large = false) {
  const img = el("img", {alt, draggable: "false"});
  img.dataset.src = thumbnail(imageId);
  if (large) img.dataset.large = rendition(imageId);
  lazy.observe(img);
  return img;
}

// --- status lines: each view has its own -------------------------------------------------------------------------

function status(view, parts, kind = "") {
  const line = $(view + "-status");
  line.className = "status" + (kind ? " " + kind : "");
  line.replaceChildren(...(Array.isArray(parts) ? parts : [parts]));
}

// --- member cards (a group's members and search results alike) -------------------------------------------------

function facts(member) {
  const rows = [
    member.distance === undefined || member.keeper ? null
      : ["distance", member.distance.toFixed(4), `squared L2 between the embeddings: ${member.distance}`],
    ["size", `${member.width ?? "?"}\u00d7${member.height ?? "?"} \u00b7 ${bytes(member.size)} \u00b7 ` +
             `${member.format ?? "?"}` + (member.jpeg_quality ? ` q${member.jpeg_quality}` : ""),
     member.jpeg_quality ? `JPEG quality ${member.jpeg_quality}, as estimated from its tables` : null],
    member.date_source === "capture time" ? ["taken", date(member.date), "when the photo was taken (EXIF)"]
      : ["file", date(member.date), "the file's modification time: it holds no capture time"],
  ];
  return el("dl", {class: "facts"}, ...rows.filter(Boolean).flatMap(([name, value, title]) =>
    [el("dt", {}, name), el("dd", {title}, value)]));
}

function memberCard(member, {wide = false, onOpen, badges = [], measure}) {
  const where = member.folder ? member.folder + "/" : "";
  const frame = el("button", {class: "frame", type: "button", title: "Full image (Enter)", onclick: onOpen},
                   lazyImage(member.image_id, member.relative, wide));
  const card = el("figure", {class: "member" + (member.keeper ? " keeper" : "") + (member.copy ? " copy" : ""),
                             dataset: {imageId: member.image_id}, tabindex: "-1"},
    frame,
    el("figcaption", {},
      el("div", {class: "badges"}, ...badges),
      el("div", {class: "name", title: member.path}, middle(member.name, 40)),
      el("div", {class: "folder muted", title: member.path}, middle(where || "./", 44)),
      measure, facts(member)));
  return card;
}

function measureLine(member) {
  if (member.keeper) return el("div", {class: "measure"}, "the keeper");
  return el("div", {class: "measure", title: "cosine similarity to the keeper (1: the same)"},
            `similarity ${similarity(member).toFixed(4)}`);
}

// --- the viewer: one image, fitted, with zoom --------------------------------------------------------------------

const viewer = {items: [], index: 0, scale: 1, fit: 1, natural: [0, 0], serial: 0};

function openViewer(items, index) {
  viewer.items = items;
  $("viewer").hidden = false;
  showInViewer(index);
  $("viewer-close").focus();
}

function closeViewer() {
  $("viewer").hidden = true;
  viewer.serial += 1;
}

async function showInViewer(index) {
  const count = viewer.items.length;
  viewer.index = (index + count) % count;
  const member = viewer.items[viewer.index];
  const serial = ++viewer.serial;
  const img = $("viewer-image");
  const measure = member.keeper ? "the keeper" : member.distance === undefined ? ""
    : (member.copy ? "exact copy \u00b7 " : "") + `similarity ${similarity(member).toFixed(4)}`;
  $("viewer-caption").textContent = [
    `${viewer.index + 1}/${count}`, middle(member.relative, 60),
    `${member.width}\u00d7${member.height}`, bytes(member.size), member.format, measure,
  ].filter(Boolean).join("  \u00b7  ");
  img.removeAttribute("src");
  try {
    const quick = await imageUrl(thumbnail(member.image_id));
    if (serial !== viewer.serial) return;
    place(img, quick, Math.min(2048, Math.max(member.width || 0, member.height || 0)));
    const full = await imageUrl(rendition(member.image_id));
    if (serial !== viewer.serial) return;
    place(img, full, null);
  } catch {
    if (serial === viewer.serial) $("viewer-caption").textContent += "  \u00b7  (no longer as indexed)";
  }
}

/** Show `url` in the viewer at the current zoom; a thumbnail stands in for the rendition at the rendition's size
 * (`longSide` pixels on its long side), the rendition at its own. */
function place(img, url, longSide) {
  img.onload = () => {
    const scale = longSide ? longSide / Math.max(img.naturalWidth, img.naturalHeight) : 1;
    viewer.natural = [Math.round(img.naturalWidth * scale), Math.round(img.naturalHeight * scale)];
    const stage = $("viewer-stage");
    viewer.fit = Math.min(1, stage.clientWidth / viewer.natural[0], stage.clientHeight / viewer.natural[1]);
    if (img.dataset.shown !== String(viewer.serial)) viewer.scale = viewer.fit;
    img.dataset.shown = String(viewer.serial);
    zoom(viewer.scale);
  };
  img.src = url;
}

function zoom(scale, around) {
  const stage = $("viewer-stage");
  const img = $("viewer-image");
  const before = viewer.scale;
  viewer.scale = Math.max(Math.min(viewer.fit, 0.1), Math.min(8, scale));
  img.style.width = Math.round(viewer.natural[0] * viewer.scale) + "px";
  img.style.height = Math.round(viewer.natural[1] * viewer.scale) + "px";
  $("zoom-level").textContent = Math.round(viewer.scale * 100) + "%";
  if (around) {  // keep the point under the pointer where it was
    const ratio = viewer.scale / before;
    stage.scrollLeft = (stage.scrollLeft + around.x) * ratio - around.x;
    stage.scrollTop = (stage.scrollTop + around.y) * ratio - around.y;
  }
}

function setUpViewer() {
  const stage = $("viewer-stage");
  $("viewer-close").onclick = closeViewer;
  $("zoom-in").onclick = () => zoom(viewer.scale * 1.25);
  $("zoom-out").onclick = () => zoom(viewer.scale / 1.25);
  $("zoom-fit").onclick = () => zoom(viewer.fit);
  $("zoom-one").onclick = () => zoom(1);
  stage.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = stage.getBoundingClientRect();
    zoom(viewer.scale * Math.pow(1.0015, -event.deltaY), {x: event.clientX - box.left, y: event.clientY - box.top});
  }, {passive: false});
  let drag = null;
  stage.addEventListener("pointerdown", (event) => {
    drag = {x: event.clientX, y: event.clientY, left: stage.scrollLeft, top: stage.scrollTop, moved: false};
  });
  stage.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    stage.scrollLeft = drag.left - dx;
    stage.scrollTop = drag.top - dy;
  });
  stage.addEventListener("pointerup", (event) => {
    const clicked = drag && !drag.moved;
    drag = null;
    if (!clicked) return;
    if (event.target !== $("viewer-image")) { closeViewer(); return; }
    const box = stage.getBoundingClientRect();
    const around = {x: event.clientX - box.left, y: event.clientY - box.top};
    zoom(viewer.scale > viewer.fit * 1.01 ? viewer.fit : Math.max(1, viewer.fit * 2), around);
  });
}

function viewerKey(event) {
  const keys = {
    Escape: closeViewer, ArrowRight: () => showInViewer(viewer.index + 1),
    ArrowLeft: () => showInViewer(viewer.index - 1), "+": () => zoom(viewer.scale * 1.25),
    "=": () => zoom(viewer.scale * 1.25), "-": () => zoom(viewer.scale / 1.25), "0": () => zoom(viewer.fit),
    "1": () => zoom(1),
  };
  const action = keys[event.key];
  if (action) { event.preventDefault(); action(); }
}

// --- routes: each view has a URL, so that reload and back work --------------------------------------------------

function settingsFrom(params) {
  return {threshold: params.get("threshold") || "", keep: params.get("keep") || DEFAULT_KEEP};
}

function query(values) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(values)) {
    if (value !== "" && value !== null && value !== undefined) params.set(key, value);
  }
  const text = params.toString();
  return text ? "?" + text : "";
}

function shownSettings(settings) {
  return {threshold: settings.threshold, keep: settings.keep === DEFAULT_KEEP ? "" : settings.keep};
}

const listUrl = (page, settings) => "/duplicates" + query({page: page > 1 ? page : "", ...shownSettings(settings)});
const groupUrl = (id, settings) => "/duplicates/group/" + id + query(shownSettings(settings));

function route() {
  const params = new URLSearchParams(location.search);
  const settings = settingsFrom(params);
  if (location.pathname === "/duplicates") {
    return {view: "list", page: Math.max(1, parseInt(params.get("page"), 10) || 1), settings};
  }
  const group = location.pathname.match(/^\/duplicates\/group\/([0-9a-f]{16})$/);
  if (group) return {view: "group", id: group[1], settings};
  return {view: "search"};
}

/** Show the view at `url` (the token's fragment kept), as a new history entry or in place of this one. */
function go(url, replace = false) {
  history[replace ? "replaceState" : "pushState"](null, "", url + location.hash);
  render();
}

function render() {
  const current = route();
  const searching = current.view === "search";
  $("search").hidden = !searching;
  $("duplicates").hidden = searching;
  $("tab-search").classList.toggle("active", searching);
  $("tab-duplicates").classList.toggle("active", !searching);
  document.title = searching ? "simsearch: search" : "simsearch: duplicates";
  if (searching) return;
  $("tab-duplicates").setAttribute("href", location.pathname + location.search);  // the tab comes back here
  $("threshold").value = current.settings.threshold;
  $("keep").value = current.settings.keep;
  if ($("keep").value !== current.settings.keep) {  // rules typed into the URL: offered as they are
    $("keep").append(el("option", {value: current.settings.keep}, current.settings.keep));
    $("keep").value = current.settings.keep;
  }
  if (current.view === "list") showList(current);
  else showGroup(current);
}

// --- duplicates: pages of groups, kept while their settings hold -------------------------------------------------

const dup = {loader: new Loader(), cache: null, view: null, selected: 0, lastResolve: null, notice: null};

/** Say what an action did: on the view it leads to, once that is drawn (instead of that view's own line). */
function notice(parts, kind = "done") {
  dup.notice = {parts, kind};
}

function viewStatus(parts) {
  if (dup.notice) {
    status("dup", dup.notice.parts, dup.notice.kind);
    dup.notice = null;
  } else {
    status("dup", parts);
  }
}

function apiSettings(settings) {
  return {threshold: settings.threshold, keep: settings.keep};
}

async function pageOfGroups(page, settings, signal) {
  const key = JSON.stringify([page, settings.threshold, settings.keep]);
  if (dup.cache && dup.cache.key === key) return dup.cache.data;
  const data = await api("/api/review/groups" + query({page, per_page: PER_PAGE, ...apiSettings(settings)}),
                         {signal});
  dup.cache = {key, data};
  return data;
}

function forget() {
  dup.cache = null;
}

function summary(data) {
  $("dup-summary").textContent = `${plural(data.total, "group")} at threshold ${data.threshold.toFixed(4)} ` +
    `(similarity \u2265 ${data.similarity.toFixed(4)}, ${data.threshold_source})`;
  $("dup-summary").title = `paths are shown relative to ${data.root}`;
}

function failed(error) {
  status("dup", error.message, "error");
}

async function showList(current) {
  status("dup", "Finding groups\u2026", "busy");
  let outcome;
  try {
    outcome = await dup.loader.run((signal) => pageOfGroups(current.page, current.settings, signal));
  } catch (error) { failed(error); return; }
  if (outcome === null) return;
  const data = outcome.result;
  if (current.page > data.pages) { go(listUrl(data.pages, current.settings), true); return; }
  dup.view = {kind: "list", data, settings: current.settings};
  summary(data);
  const first = (data.page - 1) * PER_PAGE;
  const rows = data.groups.map((group, i) => groupRow(group, first + i + 1, current.settings));
  $("dup-body").replaceChildren(...[
    pager(data, current.settings),
    data.total ? el("ol", {class: "group-list", start: first + 1}, ...rows)
      : el("p", {class: "empty"}, "No duplicate groups at this threshold."),
    data.total > PER_PAGE ? pager(data, current.settings) : null].filter(Boolean));
  performance.mark("simsearch:list-drawn");  // what benchmarks/review_page.py times
  viewStatus(data.total
    ? `Groups ${first + 1}\u2013${first + data.groups.length} of ${data.total.toLocaleString()}. ` +
      "Open one to compare (\u2190 \u2192 turn pages)."
    : "Nothing to review.");
}

function pager(data, settings) {
  const link = (page, text, rel) => page >= 1 && page <= data.pages
    ? el("a", {href: listUrl(page, settings), "data-nav": true, rel, class: "button"}, text)
    : el("span", {class: "button disabled"}, text);
  return el("nav", {class: "pager"}, link(data.page - 1, "\u2039 Previous", "prev"),
            el("span", {class: "page-number"}, `Page ${data.page} of ${data.pages}`),
            link(data.page + 1, "Next \u203a", "next"));
}

function groupRow(group, number, settings) {
  const keeper = group.members[0];
  const shown = group.members.slice(0, 8).map((member) =>
    el("span", {class: "mini" + (member.keeper ? " keeper" : ""), dataset: {imageId: member.image_id},
                title: member.relative}, lazyImage(member.image_id, member.name)));
  const more = group.members.length > 8 ? el("span", {class: "more"}, `+${group.members.length - 8}`) : null;
  const copies = group.copies ? ` \u00b7 ${plural(group.copies, "exact copy", "exact copies")}` : "";
  const about = `${group.members.length} images${copies} \u00b7 similarity \u2265 ` +
    `${group.weakest_similarity.toFixed(4)} \u00b7 kept by ${rules(group.decided_by)}`;
  return el("li", {class: "group group-row", dataset: {groupId: group.id}},
    el("a", {href: groupUrl(group.id, settings), "data-nav": true, class: "row-link"},
      el("span", {class: "number"}, `${number}`),
      el("span", {class: "minis"}, ...shown, more),
      el("span", {class: "row-text"},
        el("span", {class: "name", title: keeper.path}, middle(keeper.relative, 64)),
        el("span", {class: "muted", title: about}, about))));
}

async function showGroup(current) {
  status("dup", "Finding the group\u2026", "busy");
  let outcome;
  try {
    outcome = await dup.loader.run(async (signal) => {
      const cached = dup.cache && dup.cache.data.groups.findIndex((group) => group.id === current.id);
      if (cached !== null && cached >= 0 && dup.cache.key === JSON.stringify(
        [dup.cache.data.page, current.settings.threshold, current.settings.keep])) {
        return {data: dup.cache.data, index: cached};
      }
      const found = await api(`/api/review/groups/${current.id}` +
                              query({per_page: PER_PAGE, ...apiSettings(current.settings)}), {signal});
      const data = await pageOfGroups(found.page, current.settings, signal);
      const index = data.groups.findIndex((group) => group.id === current.id);
      return index >= 0 ? {data, index} : {data: {...data, groups: [found.group], page: 1}, index: 0};
    });
  } catch (error) {
    if (error.status === 404) {
      $("dup-body").replaceChildren(el("p", {class: "empty"}, "This group is not there any more: its members " +
        "changed, or it was resolved. ", el("a", {href: listUrl(1, current.settings), "data-nav": true},
                                             "See every group")));
    }
    failed(error);
    return;
  }
  if (outcome === null) return;
  const {data, index} = outcome.result;
  drawGroup(data, index, current.settings);
}

function drawGroup(data, index, settings) {
  const group = data.groups[index];
  const position = (data.page - 1) * PER_PAGE + index;
  dup.view = {kind: "group", data, index, position, group, settings};
  dup.selected = Math.min(dup.selected, group.members.length - 1);
  summary(data);
  const wide = group.members.length <= 4;
  const cards = group.members.map((member, i) => {
    const badges = [member.keeper ? el("span", {class: "badge keep"}, "keep") : null,
                    member.copy ? el("span", {class: "badge copy", title: "the keeper's very content"}, "copy")
                      : null,
                    el("span", {class: "badge key"}, `${i + 1}`)];
    const card = memberCard(member, {wide, badges, measure: measureLine(member),
                                     onOpen: () => openViewer(group.members, i)});
    const actions = el("div", {class: "card-actions"});
    if (!member.keeper) {
      actions.append(el("button", {type: "button", class: "keep-this", title: "Keep this one instead (K)",
                                   onclick: () => keepThis(member)}, "Keep this"));
      if (!member.copy) {
        actions.append(el("button", {type: "button", class: "not-duplicate",
                                     title: "Not a duplicate of the keeper", onclick: () => notDuplicate(member)},
                          "Not a duplicate"));
      }
    }
    card.querySelector("figcaption").append(actions);
    card.addEventListener("focus", () => select(i));
    card.addEventListener("click", () => select(i));
    return card;
  });
  const compare = el("div", {class: "compare"}, ...cards);
  compare.style.setProperty("--columns", Math.min(group.members.length, 4));  // CSSOM: allowed by the page's CSP
  const others = group.members.length - 1;
  const destination = $("destination").value === "trash" ? "the trash" : "quarantine";
  const previous = position > 0, next = position + 1 < data.total;
  $("dup-body").replaceChildren(el("section", {class: "group group-view", dataset: {groupId: group.id}},
    el("div", {class: "group-head"},
      el("h2", {}, `Group ${(position + 1).toLocaleString()} of ${data.total.toLocaleString()}`),
      el("span", {class: "muted"}, `${group.members.length} images, the keeper chosen by ${rules(group.decided_by)}` +
        ` \u00b7 weakest similarity ${group.weakest_similarity.toFixed(4)}`),
      el("nav", {class: "group-nav"},
        el("button", {type: "button", id: "previous-group", disabled: !previous, onclick: () => step(-1),
                      title: "Previous group (\u2190)"}, "\u2039 Previous"),
        el("a", {href: listUrl(data.page, settings), "data-nav": true, class: "button", title: "All groups (L)"},
           "All groups"),
        el("button", {type: "button", id: "next-group", disabled: !next, onclick: () => step(1),
                      title: "Next group (\u2192)"}, "Next \u203a"))),
    el("div", {class: "group-actions"},
      el("button", {type: "button", id: "resolve", class: "primary", onclick: resolve,
                    title: "Move the others away, to be undone any time (R)"},
         `Resolve: move ${plural(others, "other")} to ${destination}`),
      el("button", {type: "button", id: "not-duplicates", onclick: noneAreDuplicates,
                    title: "None of these are duplicates of the keeper (N)"}, "Not duplicates"),
      el("span", {class: "keys muted"}, "\u2190 \u2192 groups \u00b7 1\u20139 pick \u00b7 Enter full image \u00b7 " +
         "K keep \u00b7 N not duplicates \u00b7 R resolve \u00b7 U undo \u00b7 L list")),
    compare));
  select(dup.selected, false);
  performance.mark("simsearch:group-drawn");
  viewStatus(`Group ${(position + 1).toLocaleString()} of ${data.total.toLocaleString()}.`);
}

function select(index, focus = true) {
  const cards = [...document.querySelectorAll(".group-view .member")];
  if (!cards.length) return;
  dup.selected = Math.max(0, Math.min(index, cards.length - 1));
  cards.forEach((card, i) => card.classList.toggle("selected", i === dup.selected));
  if (focus && document.activeElement !== cards[dup.selected]) cards[dup.selected].focus({preventScroll: true});
}

/** The group `delta` away from the one shown (across pages). */
async function step(delta) {
  const view = dup.view;
  if (!view || view.kind !== "group") return;
  const target = view.position + delta;
  if (target < 0 || target >= view.data.total) return;
  dup.selected = 0;
  await showPosition(target, view.settings, false);
}

/** Show the group at `position` among all groups (the last there is, when fewer are left); with `keeper`, the
 * group on that page kept by that path, where there is one (a group that lost a member moves in the order). */
async function showPosition(position, settings, replace, keeper = null) {
  let outcome;
  try {
    outcome = await dup.loader.run(async (signal) => {
      let data = await pageOfGroups(Math.floor(position / PER_PAGE) + 1, settings, signal);
      if (!data.groups.length && data.total) data = await pageOfGroups(data.pages, settings, signal);
      return data;
    });
  } catch (error) { failed(error); return; }
  if (outcome === null) return;
  const data = outcome.result;
  if (!data.groups.length) { go(listUrl(1, settings), replace); return; }
  const kept = keeper === null ? -1 : data.groups.findIndex((group) => group.members[0].path === keeper);
  const index = kept >= 0 ? kept : Math.min(position - (data.page - 1) * PER_PAGE, data.groups.length - 1);
  history[replace ? "replaceState" : "pushState"](null, "", groupUrl(data.groups[index].id, settings) + location.hash);
  drawGroup(data, index, settings);
}

// --- decisions and actions ---------------------------------------------------------------------------------------

const acting = new Loader();

/** Run `task` (a decision or an action) unless another is under way; then the groups are found again. */
async function act(what, task) {
  const view = dup.view;
  if (!view || view.kind !== "group" || dup.busy) return;
  dup.busy = true;
  status("dup", what + "\u2026", "busy");
  try {
    const done = await acting.run(() => task(view));
    forget();
    if (done && done.result) await done.result(view);
  } catch (error) {
    failed(error);
  } finally {
    dup.busy = false;
  }
}

function keepThis(member) {
  return act("Recording the keeper", async (view) => {
    await api("/api/keepers", {method: "POST", json: {path: member.path}});
    return async () => {  // the same members: the same group, whose place in the order may change
      dup.selected = 0;
      notice(`Kept ${middle(member.relative, 60)}: it keeps in every later dedup.`);
      go(groupUrl(view.group.id, view.settings), true);
    };
  });
}

function notDuplicate(member) {
  return act("Recording", async (view) => {
    await api("/api/decisions", {method: "POST", json: {a: view.group.members[0].path, b: member.path}});
    return async () => {
      notice(`Recorded: ${middle(member.name, 40)} is not a duplicate of the keeper.`);
      await showPosition(view.position, view.settings, true, view.group.members[0].path);
    };
  });
}

function noneAreDuplicates() {
  return act("Recording", async (view) => {
    const keeper = view.group.members[0];
    const near = view.group.members.filter((member) => !member.keeper && !member.copy);
    for (const member of near) {
      await api("/api/decisions", {method: "POST", json: {a: keeper.path, b: member.path}});
    }
    return async () => {
      const copies = view.group.members.length - 1 - near.length;
      notice(`Recorded: not duplicates` + (copies ? ` (its ${plural(copies, "exact copy", "exact copies")} stay: the same content)`
        : "") + ".");
      await showPosition(view.position, view.settings, true);
    };
  });
}

function resolve() {
  const destination = $("destination").value;
  return act("Resolving", async (view) => {
    const answer = await api("/api/review/resolve", {method: "POST", json: {
      group: view.group.id, keeper: view.group.members[0].image_id, destination,
      threshold: view.settings.threshold === "" ? null : Number(view.settings.threshold),
      keep: view.settings.keep || null}});
    return async () => {
      dup.lastResolve = answer;
      const where = destination === "trash" ? "to the trash" : "to the quarantine folder";
      const parts = [`Moved ${plural(answer.moved, "file")} ${where}. `];
      if (answer.refused.length) {
        parts.push(`${answer.refused.length} not moved: ${answer.refused.map((r) => r.reason).join("; ")}. `);
      }
      if (answer.moved) {
        parts.push(el("button", {type: "button", id: "undo", onclick: () => undo(answer.resolution)}, "Undo (U)"));
      }
      notice(parts);
      loadResolved();
      await showPosition(view.position, view.settings, true);
    };
  });
}

async function undo(resolution) {
  if (dup.busy) return;
  dup.busy = true;
  status("dup", "Putting the files back\u2026", "busy");
  try {
    const answer = await api("/api/review/undo", {method: "POST", json: {resolution}});
    forget();
    const failures = answer.failed.map((failure) => `${failure.path}: ${failure.reason}`);
    notice(`Put ${plural(answer.restored, "file")} back` +
      (answer.already_back ? ` (${answer.already_back} back already)` : "") +
      (failures.length ? `; not restored: ${failures.join("; ")}` : "") + ".", failures.length ? "error" : "done");
    if (dup.lastResolve && dup.lastResolve.resolution === resolution) dup.lastResolve = null;
    loadResolved();
    const settings = dup.view ? dup.view.settings : route().settings;
    const group = resolution.split("-")[1];  // a resolve's id: time-group-random
    dup.busy = false;
    go(groupUrl(group, settings));
  } catch (error) {
    failed(error);
  } finally {
    dup.busy = false;
  }
}

const resolvedLoader = new Loader();

async function loadResolved() {
  let outcome;
  try {
    outcome = await resolvedLoader.run((signal) => api("/api/review/resolutions", {signal}));
  } catch { return; }
  if (outcome === null) return;
  const items = outcome.result.map((made) => el("li", {dataset: {resolution: made.id}},
    el("span", {}, `${date(made.at)} \u00b7 ${plural(made.files, "file")} to ${made.destination} \u00b7 ` +
                   `kept ${middle(made.keeper.split("/").pop(), 40)} `),
    made.away ? el("button", {type: "button", class: "undo", onclick: () => undo(made.id)}, "Undo")
      : el("span", {class: "muted"}, "undone"),
    el("code", {class: "muted manifest", title: "simsearch undo " + made.manifest},
       "simsearch undo \u2026/" + made.manifest.split("/").slice(-3).join("/")),
    el("button", {type: "button", class: "copy-command", title: "Copy the command, with the manifest's full path",
                  onclick: () => navigator.clipboard.writeText("simsearch undo " + made.manifest)}, "copy")));
  $("resolved-list").replaceChildren(...items);
  $("resolved").querySelector("summary").textContent = `Resolved groups (${items.length})`;
}

// --- search: drop, pick or paste -----------------------------------------------------------------------------------

const searching = new Loader();

async function search(file) {
  const preview = $("query-preview");
  const local = URL.createObjectURL(file);
  preview.hidden = false;
  const img = preview.querySelector("img");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = local;
  preview.querySelector("figcaption").textContent = middle(file.name || "pasted image", 40);
  status("search", "Searching\u2026", "busy");
  const started = performance.now();
  let outcome;
  try {
    outcome = await searching.run(async (signal) => {
      const form = new FormData();
      form.append("image", file, file.name || "pasted.png");
      form.append("k", $("k").value || "12");
      const result = await api("/api/query", {method: "POST", form, signal});
      const ids = result.neighbours.map((n) => n.image_id);
      const details = ids.length ? await api("/api/review/images?ids=" + ids.join(","), {signal}) : {images: []};
      return {result, details};
    });
  } catch (error) {
    status("search", error.message, "error");
    return;
  }
  if (outcome === null) return;
  const {result, details} = outcome.result;
  const byId = new Map(details.images.map((image) => [image.image_id, image]));
  const found = result.neighbours.filter((n) => byId.has(n.image_id))
    .map((n) => ({...byId.get(n.image_id), distance: n.distance, similarity: n.similarity, rank: n.rank}));
  const cards = found.map((member, i) => memberCard(member, {
    badges: [el("span", {class: "badge rank"}, `#${member.rank}`)],
    measure: el("div", {class: "measure", title: "cosine similarity to your image (1: the same)"},
                `similarity ${similarity(member).toFixed(4)}`),
    onOpen: () => openViewer(found, i)}));
  $("results").replaceChildren(...cards);
  status("search", `${plural(found.length, "result")} in ${Math.round(performance.now() - started)} ms` +
         (found.length ? "; click one for the full image." : "."));
}

function setUpSearch() {
  const drop = $("drop");
  $("file").onchange = () => { if ($("file").files.length) search($("file").files[0]); };
  drop.ondragover = (event) => { event.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) search(event.dataTransfer.files[0]);
  };
  document.addEventListener("paste", (event) => {
    if ($("search").hidden) return;
    const file = [...(event.clipboardData?.files || [])].find((item) => item.type.startsWith("image/"));
    if (file) { event.preventDefault(); search(file); }
  });
}

// --- keyboard ----------------------------------------------------------------------------------------------------

function onKey(event) {
  if (!$("viewer").hidden) { viewerKey(event); return; }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target.closest("input, select, textarea, summary")) return;
  if ((event.key === "Enter" || event.key === " ") && event.target.closest("button, a")) return;
  const view = dup.view;
  const current = route();
  if (current.view === "list" && view && view.kind === "list") {
    const page = {ArrowLeft: view.data.page - 1, ArrowRight: view.data.page + 1}[event.key];
    if (page && page >= 1 && page <= view.data.pages) { event.preventDefault(); go(listUrl(page, view.settings)); }
    return;
  }
  if (current.view !== "group" || !view || view.kind !== "group") return;
  const member = view.group.members[dup.selected];
  const keys = {
    ArrowLeft: () => step(-1), ArrowRight: () => step(1), Enter: () => openViewer(view.group.members, dup.selected),
    " ": () => openViewer(view.group.members, dup.selected), k: () => member && !member.keeper && keepThis(member),
    n: noneAreDuplicates, r: resolve, u: () => dup.lastResolve && undo(dup.lastResolve.resolution),
    l: () => go(listUrl(view.data.page, view.settings)),
  };
  if (/^[1-9]$/.test(event.key)) { event.preventDefault(); select(Number(event.key) - 1); return; }
  const action = keys[event.key.length === 1 ? event.key.toLowerCase() : event.key];
  if (action) { event.preventDefault(); action(); }
}

// --- start -------------------------------------------------------------------------------------------------------

function start() {
  setUpViewer();
  setUpSearch();
  document.addEventListener("keydown", onKey);
  document.addEventListener("click", (event) => {  // the page's own links change the view without a reload
    const link = event.target.closest("a[data-nav]");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    go(link.getAttribute("href"));
  });
  $("dup-settings").addEventListener("submit", (event) => {
    event.preventDefault();
    forget();
    go(listUrl(1, {threshold: $("threshold").value.trim(), keep: $("keep").value}));
  });
  $("destination").onchange = () => { if (dup.view && dup.view.kind === "group") render(); };
  window.addEventListener("popstate", render);
  loadResolved();
  render();
}

start();

// The feed page: a client of the feed's public API, nothing else (serve/page.py says why no framework).
//
//   sign in      POST dev/token (demo only) or a pasted token      → sessionStorage
//   the feed     GET feed/{user}?limit=&cursor=                    → cards; more as the end nears
//   actions      POST events {like|comment|share|hide|report|click} with the card's impression_id
//   dwell        IntersectionObserver: time a card is ≥ 50% visible → view events, sent in batches
//   composer     POST posts                                         → friends see it on their next refresh
//
// User text is only ever set as textContent: a post cannot inject markup (and the CSP forbids inline
// scripts anyway). Every URL is relative to the page, so the app works under any route prefix.

const API = new URL(".", document.baseURI);
const PAGE_SIZE = 10;
const VIEW_FLUSH_MS = 5000; // view events leave in batches at least this often
const MIN_VIEW_MS = 200; // a card scrolled past faster than this was not seen
const MAX_DWELL_MS = 30 * 60 * 1000; // the contract's bound (pipelines/common/schema.py)
const MAX_EVENTS = 500; // per request (feed.max_events_per_request)
const PULL_PX = 70; // pull-to-refresh: how far to drag down from the top
const TASK_ORDER = ["click", "like", "comment", "share", "hide", "skip"];

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("aria-") || k.startsWith("data-") || k === "role") node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
};

// Ids are int64 in the API, but JavaScript numbers are exact only up to 2^53: ids are kept as their exact
// decimal text (JSON.parse's reviver sees the source) and sent back as raw JSON numbers.
const ID_KEYS = new Set(["post_id", "author_id", "user_id"]);
function parseJSON(text) {
  return JSON.parse(text, (key, value, context) =>
    ID_KEYS.has(key) && typeof value === "number" && context && context.source !== undefined ? context.source : value);
}
const idJSON = (id) => (JSON.rawJSON ? JSON.rawJSON(String(id)) : Number(id));
const hue = (id) => Number(String(id).slice(-3)) % 8;

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts (https, localhost)
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------------------------------------ state
const state = {
  token: null,
  user: null, // the signed-in user's id, as text
  cursor: null,
  loading: false,
  stalled: false, // a page failed: no more automatic loads until "Try again"
  clockOffsetMs: 0, // serving time minus this browser's clock (the feed may run on a snapshot's clock)
  generation: 0, // bumped by every refresh: late answers to an older feed are dropped
  pages: 0,
  shown: new Set(), // post ids (text) on screen: a post is never shown twice in one feed
  hidden: new Set(), // post ids (text) this user hid or reported, kept in localStorage
};

function hiddenKey() {
  return `ray-feed.hidden.${state.user}`;
}

function loadHidden() {
  try {
    state.hidden = new Set(JSON.parse(localStorage.getItem(hiddenKey()) || "[]").map(String));
  } catch {
    state.hidden = new Set();
  }
}

function saveHidden() {
  try {
    localStorage.setItem(hiddenKey(), JSON.stringify(Array.from(state.hidden).slice(-2000)));
  } catch {
    /* storage full or disabled: the server still excludes hidden posts from the feeds it ranks */
  }
}

// ------------------------------------------------------------------------------------------ HTTP
class ApiError extends Error {
  constructor(status, detail) {
    super(describe(status, detail));
    this.status = status;
    this.detail = detail;
  }
}

function describe(status, detail) {
  if (typeof detail === "string") return `${status}: ${detail}`;
  if (Array.isArray(detail)) return `${status}: ${detail.map((p) => `${(p.loc || []).join(".")} ${p.msg}`).join("; ")}`;
  if (detail && detail.errors) return `${status}: ${detail.errors.map((p) => `${p.field} ${p.error}`).join("; ")}`;
  if (detail && detail.message) return `${status}: ${detail.message}`;
  return `HTTP ${status}`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// fetch with the bearer token; a shed request (503 + Retry-After) is retried twice. Errors throw ApiError.
async function api(path, { method = "GET", body, headers = {}, auth = true, keepalive = false } = {}) {
  const init = { method, headers: { ...headers }, keepalive };
  if (auth) init.headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  for (let attempt = 0; ; attempt++) {
    let res;
    try {
      res = await fetch(new URL(path, API), init);
    } catch (e) {
      if (attempt < 2) {
        await sleep(500 * (attempt + 1));
        continue;
      }
      throw new ApiError(0, `the feed is unreachable (${e.message})`);
    }
    if (res.status === 503 && attempt < 2) {
      await sleep(1000 * Number(res.headers.get("Retry-After") || 1));
      continue;
    }
    if (res.status === 401 && auth) {
      signOut("Your session ended: sign in again.");
      throw new ApiError(401, "signed out");
    }
    if (!res.ok) {
      let detail = null;
      try {
        detail = (await res.json()).detail;
      } catch {
        /* not JSON */
      }
      throw new ApiError(res.status, detail);
    }
    return res;
  }
}

let toastTimer = null;
// A message: announced politely (role=status), or at once for an error (role=alert).
function toast(message, error = false) {
  const [t, other] = error ? [$("alert"), $("toast")] : [$("toast"), $("alert")];
  other.classList.remove("show");
  t.textContent = message;
  t.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove("show"), error ? 8000 : 3000);
}

// ------------------------------------------------------------------------------------------ sign in
function claims(token) {
  const part = token.split(".")[1] || "";
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
  return JSON.parse(atob(b64));
}

function signIn(token) {
  let c;
  try {
    c = claims(token);
  } catch {
    toast("That is not a token (expected a JWT: three dot-separated parts).", true);
    return false;
  }
  const user = String(c.sub ?? "");
  if (!/^[0-9]{1,19}$/.test(user)) {
    toast("The token names no user (its sub claim).", true);
    return false;
  }
  if (c.exp && c.exp * 1000 < Date.now()) {
    toast("That token has expired.", true);
    return false;
  }
  Object.assign(state, { token, user });
  sessionStorage.setItem("ray-feed.token", token);
  loadHidden();
  $("sign-in").hidden = true;
  $("signed-in").hidden = false;
  $("feed").hidden = false;
  $("who").textContent = `Signed in as User ${user}`;
  refresh();
  return true;
}

function signOut(message) {
  flushViews(true); // the last views leave with this user's token; none are kept for the next user
  views.length = 0;
  sessionStorage.removeItem("ray-feed.token");
  Object.assign(state, { token: null, user: null, cursor: null });
  state.generation++;
  clearFeed();
  $("signed-in").hidden = true;
  $("feed").hidden = true;
  $("composer").hidden = true;
  $("more").hidden = true;
  $("feed-end").hidden = true;
  showSignIn();
  if (message) toast(message, true);
}

async function showSignIn() {
  $("sign-in").hidden = false;
  let users = null;
  try {
    const res = await fetch(new URL("dev/users", API));
    if (res.ok) users = parseJSON(await res.text()).users;
  } catch {
    /* the demo routes are off: paste a token */
  }
  $("demo-sign-in").hidden = users === null;
  const list = $("demo-users");
  list.replaceChildren();
  for (const u of users || []) {
    const button = el("button", { type: "button", class: "demo-user", "data-user-id": String(u.user_id) },
      el("span", { class: `avatar hue-${hue(u.user_id)}`, "aria-hidden": "true", text: initials(u.user_id) }),
      el("span", { text: `User ${u.user_id}` }),
      el("small", { text: `${u.friends} friends · ${u.friends_posts} recent posts by them` }));
    button.addEventListener("click", () => demoSignIn(u.user_id));
    list.append(el("li", {}, button));
  }
  const first = list.querySelector("button") || $("token-input");
  first.focus();
}

async function demoSignIn(userId) {
  try {
    const res = await api("dev/token", { method: "POST", body: { user_id: idJSON(userId) }, auth: false });
    signIn((await res.json()).token);
  } catch (e) {
    toast(`Could not sign in: ${e.message}`, true);
  }
}

// ------------------------------------------------------------------------------------------ the feed
function clearFeed() {
  stopAllViews();
  $("feed").replaceChildren();
  state.shown.clear();
  state.pages = 0;
}

async function refresh() {
  flushViews();
  state.generation++;
  state.cursor = null;
  state.loading = false;
  state.stalled = false;
  clearFeed();
  $("feed-end").hidden = true;
  await loadPage();
  $("feed").focus({ preventScroll: true });
}

async function loadPage() {
  if (state.loading || state.token === null) return;
  if (state.pages > 0 && !state.cursor) return;
  const generation = state.generation;
  state.loading = true;
  $("feed").setAttribute("aria-busy", "true");
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (state.cursor) params.set("cursor", state.cursor);
  try {
    const res = await api(`feed/${state.user}?${params}`);
    const body = parseJSON(await res.text());
    if (generation !== state.generation) return; // refreshed meanwhile
    state.clockOffsetMs = Date.parse(body.served_at) - Date.now();
    state.cursor = body.next_cursor;
    state.pages++;
    renderPage(body, res.headers.get("Server-Timing"));
  } catch (e) {
    if (generation !== state.generation || e.status === 401) return;
    if (e.status === 410) {
      toast("This feed expired: here is a fresh one.");
      state.loading = false;
      refresh();
      return;
    }
    state.stalled = true; // no automatic retries: "Try again" (or Refresh) asks once more
    toast(`Could not load the feed: ${e.message}`, true);
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      $("feed").setAttribute("aria-busy", "false");
      const more = Boolean(state.cursor) || (state.stalled && state.pages === 0);
      $("more").hidden = !more;
      $("more").textContent = state.stalled ? "Try again" : "Load more";
      $("feed-end").hidden = more || state.stalled;
      $("feed-end").textContent = state.shown.size ? "You're all caught up." : "Nothing new from your friends yet.";
      if (!state.stalled) {
        // observe() reports the sentinel's state at once: a short page that left it in view loads the next
        moreObserver.unobserve($("sentinel"));
        moreObserver.observe($("sentinel"));
      }
    }
  }
}

function renderPage(body, serverTiming) {
  const feed = $("feed");
  feed.append(pageInfo(body, serverTiming));
  const servedAt = Date.parse(body.served_at);
  for (const item of body.items) {
    if (state.shown.has(item.post_id) || state.hidden.has(item.post_id)) continue;
    state.shown.add(item.post_id);
    const card = renderCard(item, servedAt);
    feed.append(card);
    viewObserver.observe(card);
  }
}

const STAGES = ["retrieval", "features", "forward", "ranking", "rerank", "total"]; // the pipeline's order
// Where ``name`` goes in ``order``: names it does not list go last (in their own order: sorts are stable).
const rank = (order, name) => (order.includes(name) ? order.indexOf(name) : order.length);

function parseServerTiming(header) {
  return (header || "")
    .split(",")
    .map((part) => {
      const [name, ...params] = part.trim().split(";");
      const dur = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
      return name ? { name, ms: dur ? Number(dur.slice(4)) : null } : null;
    })
    .filter(Boolean)
    .sort((a, b) => rank(STAGES, a.name) - rank(STAGES, b.name));
}

function pageInfo(body, serverTiming) {
  const m = body.model;
  const timings = parseServerTiming(serverTiming);
  const model = m.version ? `${m.name} v${m.version} (${m.arm})` : `no model (${m.arm})`;
  const rows = [
    ["Page", String(state.pages)],
    ["Model", model],
    ["Retrieval arm", m.retrieval_arm],
    ["Request", body.request_id],
  ];
  if (body.fallback) rows.push(["Fallback", body.fallback_reason || "yes"]);
  rows.push([
    "Server-Timing",
    timings.length ? timings.map((t) => `${t.name} ${t.ms === null ? "" : t.ms.toFixed(1) + " ms"}`).join("\n")
      : "(ranked with page 1)",
  ]);
  return el("aside", { class: "page-info inspect", "aria-label": `Inspector: page ${state.pages}` }, definitions(rows));
}

function definitions(rows) {
  const dl = el("dl");
  for (const [k, v] of rows) dl.append(el("dt", { text: k }), el("dd", { text: v }));
  return dl;
}

function initials(userId) {
  return `U${String(userId).slice(-2)}`;
}

function ago(createdMs, nowMs) {
  const s = Math.max(0, (nowMs - createdMs) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

const pct = (p) => `${(100 * p).toFixed(p < 0.1 ? 2 : 1)}%`;

function renderCard(item, servedAt) {
  const id = `post-${item.post_id}`;
  const created = Date.parse(item.created_at);
  const suggested = item.source === "suggested";
  const head = el("header", { class: "card-head" },
    el("span", { class: `avatar hue-${hue(item.author_id)}`, "aria-hidden": "true", text: initials(item.author_id) }),
    el("div", { class: "byline" },
      el("span", { class: "author", id: `${id}-author`, text: `User ${item.author_id}` }),
      el("span", { class: "meta" },
        el("time", { dateTime: item.created_at, title: new Date(created).toUTCString(), text: ago(created, servedAt) }),
        ` · ${item.modality}`)),
    suggested ? el("span", { class: "badge", text: "Suggested" }) : null);
  const text = el("p", { class: "text", text: item.text });
  text.addEventListener("click", () => once(card, "click", item));
  const media = item.modality === "text" ? null
    : el("div", { class: `media media-${item.modality}`, role: "img",
      "aria-label": `${item.modality} (placeholder: this demo has no media files)`, text: item.modality === "video" ? "▶ video" : "image" });
  const topics = item.topics.length
    ? el("ul", { class: "topics", "aria-label": "Topics" }, ...item.topics.map((t) => el("li", { text: `#${t}` })))
    : null;
  const actions = el("div", { class: "actions", role: "group", "aria-label": "Respond to this post" },
    action("like", "Like", "Liked", item),
    action("comment", "Comment", "Commented", item),
    action("share", "Share", "Shared", item),
    remover("hide", "See fewer", "Hidden: you'll see fewer posts like this.", item),
    remover("report", "Report", "Reported: thank you. It won't be shown to you again.", item));
  const why = el("details", { class: "why" },
    el("summary", { text: "Why am I seeing this?" }),
    el("p", { text: item.why }),
    el("p", { class: "source", text: suggested ? "Source: suggested (out of network, from the retriever's index of public posts)" : "Source: a friend's post" }),
    item.tags.length ? el("p", { class: "tags", text: `Re-ranking: ${item.tags.join(", ")}` }) : null);
  const card = el("article", { class: "card", id, tabIndex: -1, "aria-labelledby": `${id}-author`,
    "data-post-id": String(item.post_id), "data-impression-id": item.impression_id, "data-position": String(item.position) },
    head, text, media, topics, actions, why, inspector(item));
  return card;
}

function inspector(item) {
  const rows = [["Position", String(item.position)], ["Score (after re-ranking)", item.score.toFixed(3)]];
  if (item.value !== null) rows.push(["Value model", item.value.toFixed(3)]);
  if (item.probabilities) {
    const tasks = Object.keys(item.probabilities).sort((a, b) => rank(TASK_ORDER, a) - rank(TASK_ORDER, b));
    for (const t of tasks) rows.push([`P(${t})`, pct(item.probabilities[t])]);
  }
  if (item.expected_dwell_s !== null) rows.push(["Expected dwell", `${item.expected_dwell_s.toFixed(1)} s`]);
  rows.push(["Impression", item.impression_id.slice(0, 16) + "…"]);
  return el("aside", { class: "inspect", "aria-label": "Inspector: what the ranker predicted" }, definitions(rows));
}

// ------------------------------------------------------------------------------------------ actions
function engagement(type, item, extra = {}) {
  return { type, post_id: idJSON(item.post_id), impression_id: item.impression_id, event_id: uuid(), ...extra };
}

// POST events; when the feed refuses some (422 names them by index), the others are sent again once.
async function send(events, keepalive = false) {
  try {
    return await api("events", { method: "POST", body: { events }, keepalive });
  } catch (e) {
    const bad = new Set(((e.status === 422 && e.detail && e.detail.errors) || []).map((p) => p.index));
    const rest = events.filter((_, i) => !bad.has(i));
    if (!bad.size || !rest.length) throw e;
    console.warn(`the feed refused ${bad.size} event(s): ${e.message}`);
    return api("events", { method: "POST", body: { events: rest }, keepalive });
  }
}

function once(card, type, item) {
  if (card.dataset[type]) return;
  card.dataset[type] = "sent";
  send([engagement(type, item)]).catch((e) => {
    delete card.dataset[type];
    if (e.status !== 401) toast(`Could not record the ${type}: ${e.message}`, true);
  });
}

function action(type, label, done, item) {
  const button = el("button", { type: "button", class: `act act-${type}`, "aria-pressed": "false", "data-action": type, text: label });
  button.addEventListener("click", async () => {
    if (button.getAttribute("aria-pressed") === "true" || button.dataset.busy) return;
    button.dataset.busy = "1";
    try {
      await send([engagement(type, item)]);
      button.setAttribute("aria-pressed", "true"); // the label stays; the pressed state says it is done
      button.title = done;
    } catch (e) {
      if (e.status !== 401) toast(`Could not ${type}: ${e.message}`, true);
    } finally {
      delete button.dataset.busy;
    }
  });
  return button;
}

// hide and report: the card leaves at once (and comes back only if the server refused).
function remover(type, label, done, item) {
  const button = el("button", { type: "button", class: `act act-${type}`, "data-action": type, text: label });
  button.addEventListener("click", async () => {
    const card = button.closest("article");
    const next = card.nextElementSibling;
    const focusNext = card.contains(document.activeElement);
    stopView(card);
    viewObserver.unobserve(card);
    card.remove();
    state.hidden.add(item.post_id);
    saveHidden();
    const generation = state.generation;
    if (focusNext) focusCard(next && next.matches("article") ? next : $("feed").querySelector("article:last-of-type"));
    try {
      await send([engagement(type, item)]);
      toast(done);
    } catch (e) {
      state.hidden.delete(item.post_id); // refused: nothing was stored, so it may come back
      saveHidden();
      if (generation === state.generation) {
        if (next && next.parentNode) next.before(card);
        else $("feed").append(card);
        viewObserver.observe(card);
      }
      if (e.status !== 401) toast(`Could not ${type === "hide" ? "hide" : "report"} it: ${e.message}`, true);
    }
  });
  return button;
}

function focusCard(card) {
  if (!card) return;
  card.focus();
  card.scrollIntoView({ block: "nearest" });
}

// ------------------------------------------------------------------------------------------ dwell
// A card's dwell is the time it is at least half visible while the page is visible: a stretch. A stretch
// shorter than MIN_VIEW_MS (scrolled past) is no view. A long one is sent in pieces, cut at every flush;
// each piece is a view event (the features sum an impression's views), stamped with when it ended.
const visible = new Map(); // card element → {began, since}: performance.now() of the stretch, of the piece
const views = []; // view events waiting to be sent

const viewObserver = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (e.isIntersecting && e.intersectionRatio >= 0.5) {
      if (!visible.has(e.target)) {
        const now = document.hidden ? null : performance.now();
        visible.set(e.target, { began: now, since: now });
      }
    } else {
      stopView(e.target);
    }
  }
}, { threshold: [0, 0.5, 1] });

// The piece of ``card``'s stretch up to ``now`` into the queue, if the stretch so far is a view.
function cut(card, span, now) {
  if (span.since === null || now - span.began < MIN_VIEW_MS) return false;
  const ms = Math.round(now - span.since);
  const at = new Date(Date.now() + state.clockOffsetMs).toISOString(); // in the feed's serving time
  const item = { post_id: card.dataset.postId, impression_id: card.dataset.impressionId };
  if (ms > 0) views.push(engagement("view", item, { dwell_ms: Math.min(ms, MAX_DWELL_MS), at }));
  return true;
}

function stopView(card) {
  const span = visible.get(card);
  if (!span) return;
  cut(card, span, performance.now());
  visible.delete(card);
}

function stopAllViews() {
  for (const card of Array.from(visible.keys())) stopView(card);
}

// Cut the stretches running now (a view goes on from here; a hidden page pauses them) and send the queue.
function flushViews(leaving = false) {
  const now = performance.now();
  const pause = document.hidden || leaving;
  for (const [card, span] of visible) {
    if (cut(card, span, now)) span.since = now;
    if (pause) span.since = span.began = null;
  }
  if (!views.length || state.token === null) return;
  // a request sent as the page closes (keepalive) must stay under the browser's 64 KB
  const batch = views.splice(0, leaving ? 200 : MAX_EVENTS);
  const token = state.token;
  send(batch, leaving).catch((e) => {
    // unreachable or shed: the next flush tries again, for the same user only
    if ((e.status === 0 || e.status === 503) && state.token === token) views.unshift(...batch);
  });
}

setInterval(() => flushViews(), VIEW_FLUSH_MS);
document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    flushViews(true);
  } else {
    const now = performance.now();
    for (const span of visible.values()) span.since = span.began = now; // a new stretch
  }
});
window.addEventListener("pagehide", () => flushViews(true));

// ------------------------------------------------------------------------------------------ composer
function openComposer(open) {
  $("composer").hidden = !open;
  $("compose-toggle").setAttribute("aria-expanded", String(open));
  if (open) $("post-text").focus();
  else $("compose-toggle").focus();
}

async function submitPost(e) {
  e.preventDefault();
  const form = $("composer");
  const data = new FormData(form);
  const modality = data.get("modality");
  const body = {
    text: data.get("text"),
    modality,
    visibility: data.get("visibility"),
    topics: String(data.get("topics") || "").split(",").map((t) => t.trim()).filter(Boolean),
  };
  if (modality === "video") body.media_duration_s = Number(data.get("media_duration_s") || 0);
  const submit = form.querySelector("button[type=submit]");
  submit.disabled = true;
  try {
    const key = form.dataset.key || (form.dataset.key = uuid()); // a retried post is stored once
    const res = await api("posts", { method: "POST", body, headers: { "Idempotency-Key": key } });
    const post = parseJSON(await res.text());
    delete form.dataset.key;
    form.reset();
    $("duration-field").hidden = true;
    openComposer(false);
    toast(`Posted (post ${post.post_id}): your friends see it when their feed refreshes.`);
  } catch (err) {
    if (err.status !== 401) toast(`Not posted: ${err.message}`, true);
    if (err.status >= 400 && err.status < 500) delete form.dataset.key; // refused: nothing was stored
  } finally {
    submit.disabled = false;
  }
}

// ------------------------------------------------------------------------------------------ scrolling
const moreObserver = new IntersectionObserver((entries) => {
  if (entries.some((e) => e.isIntersecting) && !state.stalled) loadPage();
}, { rootMargin: "0px 0px 600px 0px" });

let pull = null; // pull-to-refresh: {startY, dy} while a touch drags down from the top
function onTouchStart(e) {
  pull = window.scrollY <= 0 && e.touches.length === 1 && state.token ? { startY: e.touches[0].clientY, dy: 0 } : null;
}
function onTouchMove(e) {
  if (!pull) return;
  pull.dy = Math.max(0, e.touches[0].clientY - pull.startY);
  const p = $("pull");
  p.classList.toggle("pulling", pull.dy > 10);
  p.classList.toggle("ready", pull.dy >= PULL_PX);
  p.textContent = pull.dy >= PULL_PX ? "Release to refresh" : "Pull to refresh";
}
function onTouchEnd() {
  if (!pull) return;
  const go = pull.dy >= PULL_PX;
  pull = null;
  $("pull").classList.remove("pulling", "ready");
  if (go) refresh();
}

// Single-key shortcuts act only while the focus is in the feed (WCAG 2.1.4): j/k next/previous card,
// r refresh, i inspector.
function onKey(e) {
  if (!$("feed").contains(document.activeElement) || e.metaKey || e.ctrlKey || e.altKey) return;
  const cards = Array.from($("feed").querySelectorAll("article"));
  const at = cards.indexOf(document.activeElement.closest("article"));
  if (e.key === "j" || e.key === "k") {
    e.preventDefault();
    const next = e.key === "j" ? Math.min(at + 1, cards.length - 1) : Math.max(at - 1, 0);
    focusCard(cards[next]);
    if (e.key === "j" && next >= cards.length - 3 && !state.stalled) loadPage();
  } else if (e.key === "r") {
    refresh();
  } else if (e.key === "i") {
    $("inspector-toggle").click();
  }
}

// ------------------------------------------------------------------------------------------ start
function start() {
  $("refresh").addEventListener("click", refresh);
  $("more").addEventListener("click", () => {
    state.stalled = false;
    loadPage();
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("compose-toggle").addEventListener("click", () => openComposer($("composer").hidden));
  $("compose-cancel").addEventListener("click", () => openComposer(false));
  $("composer").addEventListener("submit", submitPost);
  $("post-modality").addEventListener("change", (e) => ($("duration-field").hidden = e.target.value !== "video"));
  $("inspector-toggle").addEventListener("click", (e) => {
    const on = e.currentTarget.getAttribute("aria-pressed") !== "true";
    e.currentTarget.setAttribute("aria-pressed", String(on));
    document.body.classList.toggle("inspecting", on);
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token-input").value.trim());
  });
  $("demo-form").addEventListener("submit", (e) => {
    e.preventDefault();
    demoSignIn(Number($("demo-user-id").value));
  });
  document.addEventListener("keydown", onKey);
  document.addEventListener("touchstart", onTouchStart, { passive: true });
  document.addEventListener("touchmove", onTouchMove, { passive: true });
  document.addEventListener("touchend", onTouchEnd);
  moreObserver.observe($("sentinel"));

  const saved = sessionStorage.getItem("ray-feed.token");
  let ok = false;
  if (saved) {
    try {
      const c = claims(saved);
      ok = !c.exp || c.exp * 1000 > Date.now() + 30000;
    } catch {
      ok = false;
    }
  }
  if (!(ok && signIn(saved))) showSignIn();
}

start();

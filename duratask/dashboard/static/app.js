// duratask dashboard: a small single-page app over the JSON API under api/.
// No framework and no build step. Every value from the server reaches the page as text
// (textContent, createTextNode, attribute values), never as HTML.

const LIST_REFRESH_MS = 5000;
const INSTANCE_REFRESH_MS = 1000;
const PAYLOAD_FIELDS = new Set(["input", "result", "data"]);
const MOMENT_FIELDS = new Set(["fire_at", "scheduled_start"]);

// --- small helpers ------------------------------------------------------------------------------

const slot = (root, name) => root.querySelector(`[data-slot="${name}"]`);

/** An element with attributes and children; strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

function formatMoment(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

const timeElement = (iso) => h("time", { datetime: iso, title: iso }, formatMoment(iso));

function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(3)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${(seconds % 60).toFixed(1)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** JSON text pretty-printed when it parses, as is when it does not. */
function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function compactJson(text) {
  try {
    return JSON.stringify(JSON.parse(text));
  } catch {
    return text;
  }
}

const instanceHref = (id) => `#/instances/${encodeURIComponent(id)}`;
const statusClass = (status) => `badge status-${String(status).toLowerCase().replaceAll("_", "-")}`;

function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = `toast visible ${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.className = "toast"; }, kind === "error" ? 8000 : 4000);
}

// --- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`api/${path}`, init);
  } catch {
    throw new ApiError(0, "NetworkError", "cannot reach the dashboard server");
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    // not JSON: a proxy's error page, say; the status tells enough
  }
  if (!response.ok) {
    const error = (payload && payload.error) || {};
    throw new ApiError(response.status, error.type || "HttpError", error.message || `HTTP ${response.status}`);
  }
  return payload;
}

const act = (action, id, body = {}) => api(`${action}/${encodeURIComponent(id)}`, { method: "POST", body });

// --- dialogs ------------------------------------------------------------------------------------

/** Open a modal form; `submit(formData)` runs on submit, its error stays shown in the dialog.
 *  Resolves to submit's result, or null when cancelled (button or Escape). */
function runDialog(dialog, submit) {
  const form = slot(dialog, "form");
  const error = slot(dialog, "error");
  const cancel = slot(dialog, "cancel");
  const submitButton = form.querySelector('button[type="submit"]');
  error.textContent = "";
  return new Promise((resolve) => {
    const cleanup = () => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("close", onClose);
    };
    const onSubmit = async (event) => {
      event.preventDefault();
      error.textContent = "";
      submitButton.disabled = true;
      try {
        const result = await submit(new FormData(form));
        cleanup();
        dialog.close();
        resolve(result);
      } catch (e) {
        error.textContent = e.message;
      } finally {
        submitButton.disabled = false;
      }
    };
    const onCancel = () => { cleanup(); dialog.close(); resolve(null); };
    const onClose = () => { cleanup(); resolve(null); };
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
  });
}

function raiseEventDialog(id) {
  const dialog = document.getElementById("raise-dialog");
  slot(dialog, "form").reset();
  return runDialog(dialog, async (form) => {
    const name = String(form.get("name") || "").trim();
    if (!name) throw new Error("Give the event a name.");
    const text = String(form.get("data") || "").trim();
    const body = { name };
    if (text) {
      try {
        body.data = JSON.parse(text);
      } catch (e) {
        throw new Error(`Data is not valid JSON: ${e.message}`);
      }
    }
    await act("raise-event", id, body);
    return name;
  });
}

function confirmDialog({ title, message, confirmLabel, reasonLabel, run }) {
  const dialog = document.getElementById("confirm-dialog");
  slot(dialog, "form").reset();
  slot(dialog, "title").textContent = title;
  slot(dialog, "message").textContent = message;
  slot(dialog, "confirm").textContent = confirmLabel;
  const reason = slot(dialog, "reason-label");
  reason.hidden = !reasonLabel;
  if (reasonLabel) reason.firstChild.textContent = `${reasonLabel} `;
  return runDialog(dialog, (form) => run(String(form.get("reason") || "").trim()));
}

// --- views --------------------------------------------------------------------------------------

let info = { statuses: [], connection: "" };

function mount(templateId) {
  const main = document.getElementById("main");
  const view = document.getElementById(templateId).content.firstElementChild.cloneNode(true);
  main.replaceChildren(view);
  return view;
}

function focusHeading(view) {
  view.querySelector("h1")?.focus({ preventScroll: true });
}

function readListParams(params) {
  return {
    statuses: new Set((params.get("status") || "").split(",").filter(Boolean)),
    prefix: params.get("prefix") || "",
    from: params.get("from") || "",
    to: params.get("to") || "",
    size: params.get("size") || "25",
  };
}

function listHash(filters) {
  const params = new URLSearchParams();
  if (filters.statuses.size) params.set("status", [...filters.statuses].join(","));
  for (const key of ["prefix", "from", "to"]) if (filters[key]) params.set(key, filters[key]);
  if (filters.size !== "25") params.set("size", filters.size);
  const query = params.toString();
  return query ? `#/?${query}` : "#/";
}

function localToIso(value) {
  const d = new Date(value); // a datetime-local value is local time
  return Number.isNaN(d.getTime()) ? null : d.toISOString();
}

function showList(params) {
  const view = mount("list-view");
  document.title = "Instances · duratask";
  const filters = readListParams(params);
  const paging = { token: null, previous: [], next: null };
  let stopped = false;
  let timer = null;
  let loading = 0;

  const chips = slot(view, "chips");
  const prefix = slot(view, "prefix");
  const createdFrom = slot(view, "created-from");
  const createdTo = slot(view, "created-to");
  const pageSize = slot(view, "page-size");
  const autoRefresh = slot(view, "auto-refresh");
  prefix.value = filters.prefix;
  createdFrom.value = filters.from;
  createdTo.value = filters.to;
  pageSize.value = filters.size;

  const chipFor = (label, value) => {
    const chip = h("button", { type: "button", class: "chip", "data-status": value }, label);
    chip.addEventListener("click", () => {
      if (value === "") filters.statuses.clear();
      else if (filters.statuses.has(value)) filters.statuses.delete(value);
      else filters.statuses.add(value);
      apply();
    });
    return chip;
  };
  chips.replaceChildren(chipFor("All", ""), ...info.statuses.map((s) => chipFor(s.replaceAll("_", " ").toLowerCase(), s)));
  const paintChips = () => {
    for (const chip of chips.children) {
      const value = chip.dataset.status;
      const pressed = value === "" ? filters.statuses.size === 0 : filters.statuses.has(value);
      chip.setAttribute("aria-pressed", String(pressed));
    }
  };

  function readForm() {
    filters.prefix = prefix.value.trim();
    filters.from = createdFrom.value;
    filters.to = createdTo.value;
    filters.size = pageSize.value;
  }

  function apply() {
    readForm();
    paintChips();
    history.replaceState(null, "", listHash(filters)); // no hashchange: the view stays, focus too
    paging.token = null;
    paging.previous = [];
    load();
  }

  function queryString() {
    const params = new URLSearchParams();
    for (const status of filters.statuses) params.append("status", status);
    if (filters.prefix) params.set("prefix", filters.prefix);
    const from = filters.from && localToIso(filters.from);
    const to = filters.to && localToIso(filters.to);
    if (from) params.set("created_from", from);
    if (to) params.set("created_to", to);
    params.set("page_size", filters.size);
    if (paging.token) params.set("continuation_token", paging.token);
    return params.toString();
  }

  function row(instance) {
    const link = h("a", { href: instanceHref(instance.instance_id), "data-id": instance.instance_id }, instance.instance_id);
    return h("tr", {},
      h("td", { class: "id" }, link),
      h("td", {}, instance.name),
      h("td", {}, h("span", { class: statusClass(instance.runtime_status) }, instance.runtime_status)),
      h("td", {}, timeElement(instance.created_at)),
      h("td", {}, timeElement(instance.last_updated_at)),
    );
  }

  async function load() {
    const ticket = ++loading;
    clearTimeout(timer);
    let page;
    try {
      page = await api(`instances?${queryString()}`);
    } catch (e) {
      if (!stopped && ticket === loading) toast(e.message, "error");
      schedule();
      return;
    }
    if (stopped || ticket !== loading) return; // a newer load (or another view) took over
    // Keep keyboard focus on the same instance link across refreshes.
    const focusedId = document.activeElement?.dataset?.id;
    slot(view, "rows").replaceChildren(...page.instances.map(row));
    slot(view, "empty").hidden = page.instances.length > 0;
    paging.next = page.continuation_token;
    slot(view, "prev").disabled = paging.previous.length === 0;
    slot(view, "next").disabled = !paging.next;
    slot(view, "page").textContent = `Page ${paging.previous.length + 1}`;
    if (focusedId !== undefined) {
      [...view.querySelectorAll("a[data-id]")].find((a) => a.dataset.id === focusedId)?.focus();
    }
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    if (!stopped && autoRefresh.checked) timer = setTimeout(load, LIST_REFRESH_MS);
  }

  slot(view, "filters").addEventListener("submit", (event) => { event.preventDefault(); apply(); });
  let typing = null;
  prefix.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(apply, 300); });
  for (const input of [createdFrom, createdTo, pageSize]) input.addEventListener("change", apply);
  slot(view, "clear").addEventListener("click", () => {
    filters.statuses.clear();
    prefix.value = createdFrom.value = createdTo.value = "";
    apply();
  });
  slot(view, "refresh").addEventListener("click", load);
  autoRefresh.addEventListener("change", schedule);
  slot(view, "next").addEventListener("click", () => {
    if (!paging.next) return;
    paging.previous.push(paging.token);
    paging.token = paging.next;
    load();
  });
  slot(view, "prev").addEventListener("click", () => {
    if (!paging.previous.length) return;
    paging.token = paging.previous.pop();
    load();
  });

  paintChips();
  load();
  return { view, stop() { stopped = true; clearTimeout(timer); clearTimeout(typing); } };
}

// Which actions make sense in which state (the server decides; this only avoids pointless clicks).
const ACTION_ENABLED = {
  "raise-event": (i) => !i.is_terminal,
  suspend: (i) => ["RUNNING", "PENDING", "CONTINUED_AS_NEW"].includes(i.runtime_status),
  resume: (i) => i.runtime_status === "SUSPENDED",
  terminate: (i) => !i.is_terminal,
  purge: (i) => i.is_terminal,
};

function eventCategory(event) {
  const { kind, details } = event;
  if (kind.endsWith("Failed") || (kind === "ExecutionCompleted" && details.status === "FAILED")) return "fail";
  if (kind.startsWith("Orchestrator")) return "episode";
  if (kind.startsWith("Execution") || kind === "ContinueAsNew") return "execution";
  if (kind.startsWith("SubOrchestration")) return "sub";
  if (kind.startsWith("Timer")) return "timer";
  if (kind.startsWith("Event")) return "event";
  return "task";
}

function failureElement(failure, openStack = false) {
  if (!failure) return null;
  return h("div", { class: "failure-detail" },
    h("p", {}, h("strong", { class: "error-type" }, failure.error_type), ": ",
      h("span", { class: "error-message" }, failure.error_message)),
    failure.stack_trace ? h("details", { open: openStack }, h("summary", {}, "Stack trace"), h("pre", { class: "stack" }, failure.stack_trace)) : null,
    failure.inner_failure ? h("div", { class: "inner" }, h("p", { class: "caused-by" }, "Caused by"), failureElement(failure.inner_failure)) : null,
  );
}

function detailValue(key, value) {
  if (PAYLOAD_FIELDS.has(key) && typeof value === "string") {
    const compact = compactJson(value);
    if (compact.length <= 80) return h("code", {}, compact);
    return h("details", {}, h("summary", {}, `${compact.length} characters`), h("pre", { class: "json" }, prettyJson(value)));
  }
  if (key === "failure" && value && typeof value === "object") return failureElement(value);
  if (MOMENT_FIELDS.has(key) && typeof value === "string") return timeElement(value);
  if (value !== null && typeof value === "object") return h("code", {}, JSON.stringify(value));
  return h("span", {}, String(value));
}

function eventRow(event) {
  const details = Object.entries(event.details).map(([key, value]) =>
    h("div", { class: "kv" }, h("span", { class: "k" }, key), " ", detailValue(key, value)));
  const category = eventCategory(event);
  return h("tr", { class: `ev ${category}` },
    h("td", { class: "offset" }, h("time", { datetime: event.timestamp, title: formatMoment(event.timestamp) }, `+${formatDuration(event.offset_ms)}`)),
    h("td", {}, h("span", { class: `kind ${category}` }, event.kind)),
    h("td", { class: "num" }, event.event_id >= 0 ? String(event.event_id) : ""),
    h("td", { class: "details" }, details),
  );
}

function payload(element, text) {
  element.textContent = text === null || text === undefined ? "—" : prettyJson(text);
  element.classList.toggle("none", text === null || text === undefined);
}

function showInstance(id) {
  const view = mount("instance-view");
  document.title = `${id} · duratask`;
  slot(view, "id").textContent = id;
  let stopped = false;
  let timer = null;
  let historyKey = null;
  let current = null;
  let loading = 0;

  function render(instance) {
    current = instance;
    const status = slot(view, "status");
    status.textContent = instance.runtime_status;
    status.className = statusClass(instance.runtime_status);
    slot(view, "live").hidden = instance.is_terminal;
    slot(view, "name").textContent = instance.name;
    slot(view, "created").replaceChildren(timeElement(instance.created_at));
    slot(view, "updated").replaceChildren(timeElement(instance.last_updated_at));
    const elapsed = new Date(instance.last_updated_at) - new Date(instance.created_at);
    slot(view, "duration").textContent = formatDuration(elapsed);
    slot(view, "parent-row").hidden = !instance.parent_instance_id;
    if (instance.parent_instance_id) {
      slot(view, "parent").replaceChildren(h("a", { href: instanceHref(instance.parent_instance_id) }, instance.parent_instance_id));
    }
    payload(slot(view, "input"), instance.serialized_input);
    payload(slot(view, "output"), instance.serialized_output);
    payload(slot(view, "custom-status"), instance.serialized_custom_status);
    slot(view, "failure").hidden = !instance.failure_details;
    slot(view, "failure-body").replaceChildren(...[failureElement(instance.failure_details, true)].filter(Boolean));
    for (const button of view.querySelectorAll("[data-action]")) {
      button.disabled = !ACTION_ENABLED[button.dataset.action](instance);
    }
  }

  function renderHistory(events) {
    // History only grows (until a continue-as-new); redraw only when it changed, so that
    // expanded payloads stay open while a running instance refreshes.
    const last = events[events.length - 1];
    const key = `${events.length}|${last ? last.timestamp : ""}`;
    if (key === historyKey) return;
    historyKey = key;
    slot(view, "events").replaceChildren(...events.map(eventRow));
    slot(view, "history-count").textContent = `(${events.length} events)`;
  }

  async function load() {
    const ticket = ++loading;
    clearTimeout(timer);
    let instance, history;
    try {
      [instance, history] = await Promise.all([
        api(`instances/${encodeURIComponent(id)}`),
        api(`history/${encodeURIComponent(id)}`),
      ]);
    } catch (e) {
      if (stopped || ticket !== loading) return;
      if (e.status === 404) {
        stopped = true;
        const missing = mount("missing-view");
        slot(missing, "message").textContent = `No instance with id “${id}”: it never existed, or it was purged.`;
        return;
      }
      toast(e.message, "error");
      timer = setTimeout(load, INSTANCE_REFRESH_MS * 3);
      return;
    }
    if (stopped || ticket !== loading) return; // a newer load took over (and keeps the polling)
    render(instance);
    renderHistory(history.events);
    if (!instance.is_terminal) timer = setTimeout(load, INSTANCE_REFRESH_MS);
  }

  async function simple(action, done) {
    try {
      await act(action, id);
      toast(done);
    } catch (e) {
      toast(e.message, "error");
    }
    load();
  }

  const handlers = {
    "raise-event": async () => {
      const name = await raiseEventDialog(id);
      if (name !== null) { toast(`Event “${name}” raised.`); load(); }
    },
    suspend: () => simple("suspend", "Suspend requested."),
    resume: () => simple("resume", "Resume requested."),
    terminate: async () => {
      const done = await confirmDialog({
        title: "Terminate this instance?",
        message: `Instance “${id}” and its sub-orchestrations stop for good.`,
        confirmLabel: "Terminate",
        reasonLabel: "Reason (optional, kept as the output)",
        run: (reason) => act("terminate", id, reason ? { output: reason } : {}),
      });
      if (done !== null) { toast("Terminate requested."); load(); }
    },
    purge: async () => {
      const done = await confirmDialog({
        title: "Purge this instance?",
        message: `Instance “${id}”, its history and its sub-orchestrations are deleted. This cannot be undone.`,
        confirmLabel: "Purge",
        reasonLabel: null,
        run: () => act("purge", id),
      });
      if (done !== null) {
        const n = done.purged_instance_count;
        toast(`Purged ${n} instance${n === 1 ? "" : "s"}.`);
        location.hash = "#/";
      }
    },
  };
  for (const button of view.querySelectorAll("[data-action]")) {
    button.addEventListener("click", () => { if (current) handlers[button.dataset.action](); });
  }

  load();
  return { view, stop() { stopped = true; clearTimeout(timer); } };
}

// --- routing ------------------------------------------------------------------------------------

let active = null;

function route(focus) {
  active?.stop();
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query = ""] = hash.split(/\?(.*)/s);
  active = null;
  if (path.startsWith("/instances/")) {
    let id = null;
    try {
      id = decodeURIComponent(path.slice("/instances/".length));
    } catch {
      // a malformed link: show the list instead
    }
    if (id) active = showInstance(id);
  }
  if (!active) active = showList(new URLSearchParams(query));
  if (focus) focusHeading(active.view);
}

async function start() {
  try {
    info = await api("info");
  } catch (e) {
    const main = document.getElementById("main");
    main.replaceChildren(h("p", { class: "form-error", role: "alert" }, `Cannot load the dashboard: ${e.message}`));
    return;
  }
  document.getElementById("connection").textContent = info.connection;
  window.addEventListener("hashchange", () => route(true));
  route(false);
}

start();

// The studio's API reference: each endpoint of /openapi.json with its parameters, request body
// schema and responses. Plain JS, no dependencies (works offline, unlike a CDN-loaded Swagger UI).
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function constraints(schema) {
  const keys = ["type", "enum", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "default"];
  const parts = [];
  const s = schema.anyOf ? Object.assign({}, ...schema.anyOf) : schema;
  for (const k of keys) if (s[k] !== undefined) parts.push(`${k} ${JSON.stringify(s[k])}`);
  return parts.join(", ");
}

function endpoint(path, method, op) {
  const box = el("section");
  const h = el("h2");
  h.append(el("span", method.toUpperCase(), "method"), el("code", path));
  box.append(h);
  if (op.summary) box.append(el("p", op.summary));
  if (op.parameters && op.parameters.length) {
    const table = el("table");
    table.append(el("tr"));
    table.lastChild.append(el("th", "parameter"), el("th", "in"), el("th", "schema"));
    for (const p of op.parameters) {
      const tr = el("tr");
      tr.append(el("td", p.name), el("td", p.in), el("td", constraints(p.schema || {})));
      table.append(tr);
    }
    box.append(table);
  }
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  if (body) {
    box.append(el("p", "request body (JSON schema):", "muted"), el("pre", JSON.stringify(body.schema, null, 2)));
  }
  const responses = Object.entries(op.responses || {});
  if (responses.length) {
    const ul = el("ul");
    for (const [code, r] of responses) ul.append(el("li", `${code}: ${r.description || ""}`));
    box.append(el("p", "responses:", "muted"), ul);
  }
  return box;
}

async function main() {
  const target = document.getElementById("endpoints");
  try {
    const res = await fetch("/openapi.json");
    const spec = await res.json();
    document.getElementById("title").textContent = `${spec.info.title} API (version ${spec.info.version})`;
    document.getElementById("description").textContent = spec.info.description || "";
    target.replaceChildren();
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) target.append(endpoint(path, method, op));
    }
    document.body.dataset.endpoints = String(target.children.length);
  } catch (err) {
    target.textContent = `could not read /openapi.json: ${err.message}`;
  }
}

main();

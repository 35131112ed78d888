// Saves each entry as it is made: the server writes it into the sheet's CSV at once.
"use strict";

const separator = document.body.dataset.separator;
const statusLine = document.getElementById("status");
const typing = new Map(); // text fieldset -> timer of its pending save

function valueOf(fieldset) {
  if (fieldset.dataset.kind === "text") return fieldset.querySelector("textarea").value;
  return [...fieldset.querySelectorAll("input:checked")].map((input) => input.value).join(separator);
}

async function post(path, body) {
  const reply = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                   body: JSON.stringify(body)});
  return [reply.ok, await reply.json()];
}

async function save(fieldset) {
  clearTimeout(typing.get(fieldset));
  const row = fieldset.closest("[data-row]").dataset.row;
  const column = fieldset.dataset.column;
  try {
    const [ok, body] = await post("save", {row, column, value: valueOf(fieldset)});
    fieldset.classList.toggle("error", !ok);
    if (ok) document.getElementById("complete").textContent = body.complete;
    statusLine.textContent = ok ? `Saved ${fieldset.querySelector("legend").textContent} of ${row}.` : body.error;
  } catch (error) {
    fieldset.classList.add("error");
    statusLine.textContent = `Not saved: the form's server cannot be reached (${error}). Is it still running?`;
  }
}

document.addEventListener("change", (event) => {
  const fieldset = event.target.closest("fieldset[data-column]");
  if (fieldset) save(fieldset);
});

// free text is also saved after a pause in typing, so text typed before closing the page is kept
document.addEventListener("input", (event) => {
  const fieldset = event.target.closest("fieldset[data-kind='text']");
  if (!fieldset) return;
  clearTimeout(typing.get(fieldset));
  typing.set(fieldset, setTimeout(() => save(fieldset), 800));
});

document.getElementById("finish").addEventListener("click", async () => {
  const message = document.getElementById("finish-message");
  try {
    const [, body] = await post("finish", {});
    message.textContent = body.message;
    message.className = body.ready ? "ready" : "problems";
  } catch (error) {
    message.textContent = `The form's server cannot be reached (${error}). Is it still running?`;
    message.className = "problems";
  }
});

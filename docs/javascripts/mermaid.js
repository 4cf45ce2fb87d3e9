// Draws the ```mermaid blocks of the documentation (docs/architecture.md's layer diagram).
// pymdownx.superfences writes each as <pre class="mermaid"><code>SOURCE</code></pre>; mermaid reads a
// diagram from an element's text, so each block becomes a <div class="mermaid"> of its source first.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("pre.mermaid").forEach(function (block) {
    var diagram = document.createElement("div");
    diagram.className = "mermaid";
    diagram.textContent = block.textContent;
    block.replaceWith(diagram);
  });
  mermaid.initialize({ startOnLoad: false });
  mermaid.run();
});

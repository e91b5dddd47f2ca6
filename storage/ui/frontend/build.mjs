// Bundles src/ into ../static (shipped in the Python package): app.js, app.css, index.html, uPlot's CSS.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

const out = "../static";
mkdirSync(out, { recursive: true });
await build({ entryPoints: ["src/main.js"], bundle: true, minify: true, sourcemap: true, target: "es2020",
  format: "iife", outfile: `${out}/app.js`, logLevel: "warning" });
copyFileSync("src/app.css", `${out}/app.css`);
copyFileSync("index.html", `${out}/index.html`);
copyFileSync("node_modules/uplot/dist/uPlot.min.css", `${out}/uPlot.min.css`);

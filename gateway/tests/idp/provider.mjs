// An OpenID provider for the gateway's tests: oauth2-mock-server's issuer and endpoints
// (discovery, JWKS, token), on 127.0.0.1 and a free port. Prints {"url": ...} once listening,
// then answers one JSON line per command read on stdin:
//   {"cmd":"token","sub":"alice","kid":"k1","expires_in":60}  -> {"token": "..."}
//   {"cmd":"add_key","alg":"ES256","kid":"k2"}                 -> {"kid": "k2"}
//   {"cmd":"retire_key","kid":"k1"}                            -> {"kid": "k1"} (left out of the JWKS)
//   {"cmd":"cache_control","value":"max-age=3600"}             -> {"value": "..."} (of JWKS answers)
//   {"cmd":"hits"}                                             -> {"jwks": n, "discovery": n}
// The test stops it by killing the process ("the provider is down"). With TLS_KEY_FILE and
// TLS_CERT_FILE it speaks HTTPS (its issuer is then https://127.0.0.1:PORT).
import fs from "node:fs";
import http from "node:http";
import https from "node:https";
import readline from "node:readline";
import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

const audience = process.env.AUDIENCE || "taskboard";
const issuer = new OAuth2Issuer();
await issuer.keys.generate(process.env.FIRST_ALG || "RS256", { kid: "k1" });
const service = new OAuth2Service(issuer);
const hits = { jwks: 0, discovery: 0 };
let cacheControl = process.env.JWKS_CACHE_CONTROL || "max-age=300";
// Keys the provider no longer publishes (it still holds them, so it can sign with them).
const retired = new Set();
const tls = process.env.TLS_KEY_FILE
  ? { key: fs.readFileSync(process.env.TLS_KEY_FILE), cert: fs.readFileSync(process.env.TLS_CERT_FILE) }
  : null;
const handler = (req, res) => {
  if (req.url.startsWith("/jwks")) {
    hits.jwks += 1;
    res.setHeader("Cache-Control", cacheControl);
    if (retired.size > 0) {
      const keys = issuer.keys.toJSON().filter((k) => !retired.has(k.kid));
      res.setHeader("Content-Type", "application/json");
      res.end(JSON.stringify({ keys }));
      return;
    }
  }
  if (req.url.startsWith("/.well-known/")) hits.discovery += 1;
  service.requestHandler(req, res);
};
const server = tls ? https.createServer(tls, handler) : http.createServer(handler);
server.listen(0, "127.0.0.1", () => {
  issuer.url = `${tls ? "https" : "http"}://127.0.0.1:${server.address().port}`;
  console.log(JSON.stringify({ url: issuer.url }));
});

const answer = (v) => console.log(JSON.stringify(v));
for await (const line of readline.createInterface({ input: process.stdin })) {
  try {
    const c = JSON.parse(line);
    if (c.cmd === "token") {
      const token = await issuer.buildToken({
        kid: c.kid,
        expiresIn: c.expires_in ?? 3600,
        scopesOrTransform: (_header, payload) => {
          payload.sub = c.sub;
          payload.aud = c.aud ?? audience;
        },
      });
      answer({ token });
    } else if (c.cmd === "add_key") {
      const jwk = await issuer.keys.generate(c.alg, { kid: c.kid });
      answer({ kid: jwk.kid });
    } else if (c.cmd === "retire_key") {
      retired.add(c.kid);
      answer({ kid: c.kid });
    } else if (c.cmd === "cache_control") {
      cacheControl = c.value;
      answer({ value: cacheControl });
    } else if (c.cmd === "hits") {
      answer(hits);
    } else {
      answer({ error: `unknown command ${c.cmd}` });
    }
  } catch (e) {
    answer({ error: String(e) });
  }
}

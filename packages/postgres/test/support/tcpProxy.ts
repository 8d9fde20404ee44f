/**
 * A TCP proxy between a pool and PostgreSQL whose links can be frozen: a frozen link forwards
 * nothing in either direction, not even a close (a network partition of that one connection, or a
 * server that stopped answering on it), while new links keep working. Unfrozen, it delivers what
 * it held, closes included.
 */
import net from "node:net"

interface Link {
  readonly client: net.Socket
  readonly upstream: net.Socket
  frozen: boolean
  readonly toServer: Array<Buffer>
  readonly toClient: Array<Buffer>
  clientClosed: boolean
  upstreamClosed: boolean
}

export interface TcpProxy {
  /** `url` with its host and port replaced by the proxy's. */
  readonly url: (url: string) => string
  /**
   * The next chunk a client sends that `match` accepts freezes its link: with `deliver` false the
   * chunk is held too (the server never gets it); with `deliver` true the server gets it but its
   * answers are held (the replies are lost). Resolves when a link froze.
   */
  readonly freezeWhen: (
    match: (chunk: Buffer) => boolean,
    options: { readonly deliver: boolean }
  ) => Promise<void>
  /** How many links are frozen. */
  readonly frozen: () => number
  /** Delivers what frozen links held (closes included) and forwards again. */
  readonly unfreeze: () => void
  /** Closes the proxy and every link. */
  readonly close: () => Promise<void>
}

/** A proxy to `target` (a postgres URL) on an ephemeral port of 127.0.0.1. */
export const start = async (target: string): Promise<TcpProxy> => {
  const upstreamUrl = new URL(target)
  const links = new Set<Link>()
  let armed: { match: (chunk: Buffer) => boolean; deliver: boolean; froze: () => void } | undefined

  const flush = (link: Link) => {
    link.frozen = false
    for (const chunk of link.toServer.splice(0)) link.upstream.write(chunk)
    for (const chunk of link.toClient.splice(0)) link.client.write(chunk)
    if (link.clientClosed) link.upstream.destroy()
    if (link.upstreamClosed) link.client.destroy()
  }

  const server = net.createServer((client) => {
    const upstream = net.connect(Number(upstreamUrl.port || 5432), upstreamUrl.hostname)
    const link: Link = {
      client,
      upstream,
      frozen: false,
      toServer: [],
      toClient: [],
      clientClosed: false,
      upstreamClosed: false
    }
    links.add(link)
    client.on("data", (chunk: Buffer) => {
      if (!link.frozen && armed?.match(chunk)) {
        const { deliver, froze } = armed
        armed = undefined
        link.frozen = true
        if (deliver) upstream.write(chunk)
        else link.toServer.push(chunk)
        froze()
        return
      }
      if (link.frozen) link.toServer.push(chunk)
      else upstream.write(chunk)
    })
    upstream.on("data", (chunk: Buffer) => {
      if (link.frozen) link.toClient.push(chunk)
      else client.write(chunk)
    })
    client.on("close", () => {
      link.clientClosed = true
      if (!link.frozen) upstream.destroy()
    })
    upstream.on("close", () => {
      link.upstreamClosed = true
      if (!link.frozen) client.destroy()
    })
    client.on("error", () => undefined)
    upstream.on("error", () => undefined)
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as net.AddressInfo).port

  return {
    url: (url) => {
      const proxied = new URL(url)
      proxied.hostname = "127.0.0.1"
      proxied.port = String(port)
      return proxied.toString()
    },
    freezeWhen: (match, { deliver }) =>
      new Promise<void>((froze) => {
        armed = { match, deliver, froze }
      }),
    frozen: () => [...links].filter((link) => link.frozen).length,
    unfreeze: () => {
      for (const link of links) if (link.frozen) flush(link)
    },
    close: async () => {
      armed = undefined
      for (const link of links) {
        link.client.destroy()
        link.upstream.destroy()
      }
      links.clear()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

/** A simple-protocol `BEGIN` (how a branch opens its transaction) in a client's chunk. */
export const carriesBegin = (chunk: Buffer): boolean => chunk.includes("BEGIN\u0000")

/** Accord's marker and `PREPARE TRANSACTION` (one simple-protocol message) in a client's chunk. */
export const carriesPrepare = (chunk: Buffer): boolean => chunk.includes("PREPARE TRANSACTION")

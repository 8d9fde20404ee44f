/**
 * The demo's world, derived from a seed: the catalogue and its initial stock, the customers (a share of
 * them with a card the payment service declines) and the orders to place. Every process derives the
 * same plan from the same seed, so the services seed their databases and the orchestrator places
 * orders without passing data around.
 *
 * @since 0.1.0
 */

/**
 * A product with its price (cents) and initial stock.
 * @since 0.1.0
 */
export interface Product {
  readonly sku: string
  readonly priceCents: number
  readonly initialStock: number
}

/**
 * A customer; `declined` customers' cards are refused by the payment service's own rule.
 * @since 0.1.0
 */
export interface Customer {
  readonly id: string
  readonly name: string
  readonly declined: boolean
}

/**
 * One order to place: the saga input.
 * @since 0.1.0
 */
export interface OrderInput {
  readonly orderId: string
  readonly customerId: string
  readonly sku: string
  readonly quantity: number
  readonly amountCents: number
}

/**
 * The whole plan of a run.
 * @since 0.1.0
 */
export interface Plan {
  readonly products: ReadonlyArray<Product>
  readonly customers: ReadonlyArray<Customer>
  readonly orders: ReadonlyArray<OrderInput>
}

/**
 * A small deterministic PRNG (mulberry32): same seed, same plan, in every process.
 * @since 0.1.0
 */
export const random = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * A stable number in [0, 1) for a string: used by services for per-request rules (which shipments
 * are slow) so that a retry of the same request meets the same rule.
 * @since 0.1.0
 */
export const unitHash = (text: string): number => {
  let h = 2166136261
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 16777619)
  }
  return (h >>> 0) / 4294967296
}

/** How stock compares with expected demand, per product: the last ones sell out during a run. */
const stockFactors = [1.6, 1.5, 1.4, 1.3, 0.9, 0.6] as const

/**
 * The catalogue and customers, seeded into the services' databases. Independent of the order count
 * of a particular run only through `stockBase` (the expected demand per product).
 * @since 0.1.0
 */
export const world = (options: {
  readonly seed: number
  readonly stockBase: number
  readonly customers: number
  readonly declineRate: number
}): Pick<Plan, "products" | "customers"> => {
  const rnd = random(options.seed)
  const products = stockFactors.map((factor, i) => ({
    sku: `SKU-${String(i + 1).padStart(3, "0")}`,
    priceCents: 500 + Math.floor(rnd() * 50) * 100,
    initialStock: Math.max(1, Math.round(options.stockBase * factor))
  }))
  const declinedCount = Math.round(options.customers * options.declineRate)
  const customers = Array.from({ length: options.customers }, (_, i) => ({
    id: `C${String(i + 1).padStart(4, "0")}`,
    name: `Customer ${i + 1}`,
    // Spread the declined cards over the range instead of taking the first ones.
    declined:
      Math.floor(((i + 1) * declinedCount) / options.customers) >
      Math.floor((i * declinedCount) / options.customers)
  }))
  return { products, customers }
}

/**
 * The orders of one run (`runId` keeps order ids unique across runs on the same databases).
 * @since 0.1.0
 */
export const orders = (options: {
  readonly seed: number
  readonly runId: string
  readonly count: number
  readonly products: ReadonlyArray<Product>
  readonly customers: ReadonlyArray<Customer>
}): ReadonlyArray<OrderInput> => {
  const rnd = random(options.seed ^ 0x5bd1e995)
  return Array.from({ length: options.count }, (_, i) => {
    const product = options.products[Math.floor(rnd() * options.products.length)]!
    const customer = options.customers[Math.floor(rnd() * options.customers.length)]!
    const quantity = 1 + Math.floor(rnd() * 3)
    return {
      orderId: `${options.runId}-${String(i + 1).padStart(5, "0")}`,
      customerId: customer.id,
      sku: product.sku,
      quantity,
      amountCents: product.priceCents * quantity
    }
  })
}

/** Average quantity per order (1..3). */
export const averageQuantity = 2

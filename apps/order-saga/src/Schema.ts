/**
 * The services' own tables (drizzle), one schema per service database, and the DDL that creates them.
 *
 * Each service also keeps a movement ledger (`*_events`) with no uniqueness on (order, kind): the
 * invariant checker reads it to prove that no action or compensation took effect twice, which the
 * barrier is meant to guarantee but the ledger does not assume.
 *
 * @since 0.1.0
 */
import { sql } from "drizzle-orm"
import { bigint, check, integer, pgTable, serial, text, timestamp } from "drizzle-orm/pg-core"

// ---------------------------------------------------------------- orders

/** @since 0.1.0 */
export const orders = pgTable(
  "orders",
  {
    id: text("id").primaryKey(),
    customerId: text("customer_id").notNull(),
    sku: text("sku").notNull(),
    quantity: integer("quantity").notNull(),
    amountCents: bigint("amount_cents", { mode: "number" }).notNull(),
    /** pending -> completed | cancelled */
    status: text("status").notNull(),
    reason: text("reason"),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow()
  },
  (t) => [
    check("orders_status", sql`${t.status} in ('pending', 'completed', 'cancelled')`),
    check("orders_quantity", sql`${t.quantity} > 0`)
  ]
)

/** @since 0.1.0 */
export const ordersDdl = `
create table if not exists orders (
  id text primary key,
  customer_id text not null,
  sku text not null,
  quantity integer not null constraint orders_quantity check (quantity > 0),
  amount_cents bigint not null,
  status text not null constraint orders_status check (status in ('pending', 'completed', 'cancelled')),
  reason text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
`

// ---------------------------------------------------------------- inventory

/** @since 0.1.0 */
export const stock = pgTable(
  "stock",
  {
    sku: text("sku").primaryKey(),
    initial: integer("initial").notNull(),
    onHand: integer("on_hand").notNull(),
    reserved: integer("reserved").notNull(),
    shipped: integer("shipped").notNull()
  },
  (t) => [
    check("stock_on_hand_nonnegative", sql`${t.onHand} >= 0`),
    check("stock_reserved_nonnegative", sql`${t.reserved} >= 0`)
  ]
)

/** @since 0.1.0 */
export const reservations = pgTable(
  "reservations",
  {
    orderId: text("order_id").primaryKey(),
    sku: text("sku").notNull(),
    quantity: integer("quantity").notNull(),
    /** reserved -> shipped | released */
    status: text("status").notNull()
  },
  (t) => [check("reservations_status", sql`${t.status} in ('reserved', 'shipped', 'released')`)]
)

/** @since 0.1.0 */
export const stockEvents = pgTable("stock_events", {
  id: serial("id").primaryKey(),
  orderId: text("order_id").notNull(),
  sku: text("sku").notNull(),
  /** reserve | release | ship */
  kind: text("kind").notNull(),
  quantity: integer("quantity").notNull(),
  at: timestamp("at", { withTimezone: true }).notNull().defaultNow()
})

/** @since 0.1.0 */
export const inventoryDdl = `
create table if not exists stock (
  sku text primary key,
  initial integer not null,
  on_hand integer not null constraint stock_on_hand_nonnegative check (on_hand >= 0),
  reserved integer not null constraint stock_reserved_nonnegative check (reserved >= 0),
  shipped integer not null
);
create table if not exists reservations (
  order_id text primary key,
  sku text not null,
  quantity integer not null,
  status text not null constraint reservations_status check (status in ('reserved', 'shipped', 'released'))
);
create table if not exists stock_events (
  id serial primary key,
  order_id text not null,
  sku text not null,
  kind text not null,
  quantity integer not null,
  at timestamptz not null default now()
);
`

// ---------------------------------------------------------------- payment

/** @since 0.1.0 */
export const customers = pgTable(
  "customers",
  {
    id: text("id").primaryKey(),
    name: text("name").notNull(),
    /** ok | declined: the payment service's own rule */
    cardStatus: text("card_status").notNull()
  },
  (t) => [check("customers_card_status", sql`${t.cardStatus} in ('ok', 'declined')`)]
)

/** @since 0.1.0 */
export const charges = pgTable(
  "charges",
  {
    orderId: text("order_id").primaryKey(),
    customerId: text("customer_id").notNull(),
    amountCents: bigint("amount_cents", { mode: "number" }).notNull(),
    /** authorized -> captured | refunded */
    status: text("status").notNull()
  },
  (t) => [check("charges_status", sql`${t.status} in ('authorized', 'captured', 'refunded')`)]
)

/** @since 0.1.0 */
export const paymentEvents = pgTable("payment_events", {
  id: serial("id").primaryKey(),
  orderId: text("order_id").notNull(),
  /** charge | capture | refund */
  kind: text("kind").notNull(),
  amountCents: bigint("amount_cents", { mode: "number" }).notNull(),
  at: timestamp("at", { withTimezone: true }).notNull().defaultNow()
})

/** @since 0.1.0 */
export const paymentDdl = `
create table if not exists customers (
  id text primary key,
  name text not null,
  card_status text not null constraint customers_card_status check (card_status in ('ok', 'declined'))
);
create table if not exists charges (
  order_id text primary key,
  customer_id text not null,
  amount_cents bigint not null,
  status text not null constraint charges_status check (status in ('authorized', 'captured', 'refunded'))
);
create table if not exists payment_events (
  id serial primary key,
  order_id text not null,
  kind text not null,
  amount_cents bigint not null,
  at timestamptz not null default now()
);
`

// ---------------------------------------------------------------- shipping

/** @since 0.1.0 */
export const shipments = pgTable(
  "shipments",
  {
    orderId: text("order_id").primaryKey(),
    sku: text("sku").notNull(),
    quantity: integer("quantity").notNull(),
    /** scheduled | cancelled */
    status: text("status").notNull()
  },
  (t) => [check("shipments_status", sql`${t.status} in ('scheduled', 'cancelled')`)]
)

/** @since 0.1.0 */
export const shippingEvents = pgTable("shipping_events", {
  id: serial("id").primaryKey(),
  orderId: text("order_id").notNull(),
  /** schedule | cancel */
  kind: text("kind").notNull(),
  at: timestamp("at", { withTimezone: true }).notNull().defaultNow()
})

/** @since 0.1.0 */
export const shippingDdl = `
create table if not exists shipments (
  order_id text primary key,
  sku text not null,
  quantity integer not null,
  status text not null constraint shipments_status check (status in ('scheduled', 'cancelled'))
);
create table if not exists shipping_events (
  id serial primary key,
  order_id text not null,
  kind text not null,
  at timestamptz not null default now()
);
`

import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import { type CallOptions, type ChannelCredentials, Client, type ClientOptions, type ClientReadableStream, type ClientUnaryCall, type handleServerStreamingCall, type handleUnaryCall, type Metadata, type ServiceError, type UntypedServiceImplementation } from "@grpc/grpc-js";
import { Duration } from "../../google/protobuf/duration";
export declare const protobufPackage = "eventbroker.v1";
export declare const protobufFileName = "eventbroker/v1/broker.proto";
/**
 * The event broker API: publish named events, fan them out to durable
 * subscriptions, and consume them over server streams with ack and nack.
 */
/** PublishStatus says whether a publish stored a new event. */
export declare enum PublishStatus {
    /** PUBLISH_STATUS_UNSPECIFIED - Not set. */
    PUBLISH_STATUS_UNSPECIFIED = 0,
    /** PUBLISH_STATUS_CREATED - The event was stored and fanned out. */
    PUBLISH_STATUS_CREATED = 1,
    /**
     * PUBLISH_STATUS_DUPLICATE - An event with the same id was published inside the dedup window; nothing
     * was stored and the first event's id is returned.
     */
    PUBLISH_STATUS_DUPLICATE = 2,
    UNRECOGNIZED = -1
}
export declare function publishStatusFromJSON(object: any): PublishStatus;
export declare function publishStatusToJSON(object: PublishStatus): string;
/** StartPosition says where a new subscription starts. */
export declare enum StartPosition {
    /** START_POSITION_UNSPECIFIED - The default: new events only. */
    START_POSITION_UNSPECIFIED = 0,
    /** START_POSITION_NEW - Events published after the subscription is created. */
    START_POSITION_NEW = 1,
    /** START_POSITION_BEGINNING - Every stored event that matches. */
    START_POSITION_BEGINNING = 2,
    /** START_POSITION_TIME - Stored events published at or after start_time. */
    START_POSITION_TIME = 3,
    UNRECOGNIZED = -1
}
export declare function startPositionFromJSON(object: any): StartPosition;
export declare function startPositionToJSON(object: StartPosition): string;
/** DeliveryState is where a delivery stands. */
export declare enum DeliveryState {
    /** DELIVERY_STATE_UNSPECIFIED - Not set. */
    DELIVERY_STATE_UNSPECIFIED = 0,
    /** DELIVERY_STATE_SCHEDULED - Waiting for its time (delay, deliver_at or backoff). */
    DELIVERY_STATE_SCHEDULED = 1,
    /** DELIVERY_STATE_READY - Ready to be delivered. */
    DELIVERY_STATE_READY = 2,
    /** DELIVERY_STATE_IN_FLIGHT - Leased to a consumer. */
    DELIVERY_STATE_IN_FLIGHT = 3,
    /** DELIVERY_STATE_ACKED - Acknowledged. */
    DELIVERY_STATE_ACKED = 4,
    /** DELIVERY_STATE_DEAD - Dead-lettered. */
    DELIVERY_STATE_DEAD = 5,
    /**
     * DELIVERY_STATE_BLOCKED - Waiting for its key (ordered subscriptions, or max_in_flight_per_key):
     * every slot of the key is held by an earlier delivery; it becomes ready
     * when one of those is acked or dead (DeliveryStatus.key_wait says which).
     */
    DELIVERY_STATE_BLOCKED = 6,
    UNRECOGNIZED = -1
}
export declare function deliveryStateFromJSON(object: any): DeliveryState;
export declare function deliveryStateToJSON(object: DeliveryState): string;
/** DeadReason says why a delivery was dead-lettered. */
export declare enum DeadReason {
    /** DEAD_REASON_UNSPECIFIED - Not dead. */
    DEAD_REASON_UNSPECIFIED = 0,
    /** DEAD_REASON_ATTEMPTS_EXHAUSTED - Max attempts reached. */
    DEAD_REASON_ATTEMPTS_EXHAUSTED = 1,
    /** DEAD_REASON_NACKED_TERMINAL - Nacked as terminal by a consumer. */
    DEAD_REASON_NACKED_TERMINAL = 2,
    /** DEAD_REASON_EXPIRED - Older than the subscription's maximum age. */
    DEAD_REASON_EXPIRED = 3,
    UNRECOGNIZED = -1
}
export declare function deadReasonFromJSON(object: any): DeadReason;
export declare function deadReasonToJSON(object: DeadReason): string;
/** AttemptOutcome is how one attempt ended. */
export declare enum AttemptOutcome {
    /** ATTEMPT_OUTCOME_UNSPECIFIED - Not set. */
    ATTEMPT_OUTCOME_UNSPECIFIED = 0,
    /** ATTEMPT_OUTCOME_ACKED - Acked. */
    ATTEMPT_OUTCOME_ACKED = 1,
    /** ATTEMPT_OUTCOME_NACKED - Nacked. */
    ATTEMPT_OUTCOME_NACKED = 2,
    /** ATTEMPT_OUTCOME_EXPIRED - The ack deadline passed. */
    ATTEMPT_OUTCOME_EXPIRED = 3,
    /** ATTEMPT_OUTCOME_RELEASED - The consumer disconnected before acking. */
    ATTEMPT_OUTCOME_RELEASED = 4,
    UNRECOGNIZED = -1
}
export declare function attemptOutcomeFromJSON(object: any): AttemptOutcome;
export declare function attemptOutcomeToJSON(object: AttemptOutcome): string;
/** Event is one event as a publisher sends it. */
export interface Event {
    /**
     * Name of the event: 1 to 255 letters, digits and `._-/:`; case-insensitive,
     * stored lower-cased. Segments are separated by `.`.
     */
    name: string;
    /** Any JSON value. Numbers travel as doubles (exact up to 2^53). */
    data?: any | undefined;
    /** Opaque bytes, described by content_type. */
    binaryData?: Buffer | undefined;
    /**
     * Content type of binary_data; defaults to application/octet-stream.
     * `application/json` binary data is validated and delivered as `data`.
     */
    contentType: string;
    /** Optional string headers. */
    headers: {
        [key: string]: string;
    };
    /**
     * Optional id for deduplication: a second publish with the same id inside
     * the dedup window stores nothing and returns the first event's id.
     */
    id: string;
    /** Delay from now. */
    delay?: Duration | undefined;
    /** Absolute UTC time. */
    deliverAt?: Date | undefined;
    /**
     * Priority, -50..50 (default 0): among deliveries ready at the same time in
     * one subscription, higher goes first.
     */
    priority: number;
    /**
     * Optional ordering key: the key of ordered subscriptions (FIFO per key) and
     * of max_in_flight_per_key (a concurrency limit per key). At most 255
     * characters, without NUL.
     */
    orderingKey: string;
}
export interface Event_HeadersEntry {
    key: string;
    value: string;
}
/** PublishResult is the outcome of publishing one event. */
export interface PublishResult {
    /** The broker-assigned event id (the first event's id for a duplicate). */
    eventId: string;
    /** Whether the event was new or a duplicate. */
    status: PublishStatus;
    /**
     * How many subscriptions this publish gave a delivery to: the subscriptions
     * whose filter matched the name when it was stored. 0 for an event no
     * subscription matches (it is stored, for replay and GetEvent, and delivered
     * to nobody: often a misspelt name), and 0 for a duplicate, which stores and
     * delivers nothing (the first publish of that id reported its own count).
     */
    matchedSubscriptions: number;
}
/** PublishRequest carries one event. */
export interface PublishRequest {
    /** The event to publish. */
    event?: Event | undefined;
}
/** PublishResponse is the outcome of a Publish. */
export interface PublishResponse {
    /** The broker-assigned event id (the first event's id for a duplicate). */
    eventId: string;
    /** Whether the event was new or a duplicate. */
    status: PublishStatus;
    /**
     * How many subscriptions this publish gave a delivery to: the subscriptions
     * whose filter matched the name when it was stored. 0 for an event no
     * subscription matches (it is stored, for replay and GetEvent, and delivered
     * to nobody: often a misspelt name), and 0 for a duplicate, which stores and
     * delivers nothing (the first publish of that id reported its own count).
     */
    matchedSubscriptions: number;
}
/** BatchPublishRequest carries many events, stored all or none. */
export interface BatchPublishRequest {
    /** The events, at most 1,000 and 4 MiB by default. */
    events: Event[];
}
/** BatchPublishResponse has one result per event, in request order. */
export interface BatchPublishResponse {
    /** Results in the order of the request's events. */
    results: PublishResult[];
}
/** SubscribeRequest attaches a consumer. */
export interface SubscribeRequest {
    /** Name of a durable subscription. Empty with a filter: an ephemeral tail. */
    subscription: string;
    /**
     * How many unacknowledged deliveries this consumer may hold at once.
     * 0 means the default (100); at most 10,000.
     */
    maxOutstanding: number;
    /**
     * How many deliveries at most to put in one stream message. 0 means the
     * default (100).
     */
    maxBatchSize: number;
    /** Name patterns for an ephemeral tail (only without a subscription). */
    filter: string[];
    /** A name for this consumer, shown in attempt history and stats. */
    consumerName: string;
    /**
     * Deliver JSON payloads as `binary_data` with content type
     * `application/json` instead of `data`: cheaper for clients that parse JSON
     * themselves (the Python client does).
     */
    jsonAsBinary: boolean;
}
/** SubscribeResponse is one stream message: a batch of deliveries. */
export interface SubscribeResponse {
    /** The deliveries; the consumer must ack or nack each one. */
    deliveries: Delivery[];
}
/** Delivery is one event handed to one consumer of one subscription. */
export interface Delivery {
    /**
     * The id to ack, nack or extend this delivery with. It is valid for this
     * lease only: after the deadline passes a new lease gets a new id.
     */
    ackId: string;
    /** The event id. */
    eventId: string;
    /** The event name, lower-cased. */
    name: string;
    /** JSON data. */
    data?: any | undefined;
    /** Binary data, described by content_type. */
    binaryData?: Buffer | undefined;
    /** Content type of the payload. */
    contentType: string;
    /** Headers given at publish. */
    headers: {
        [key: string]: string;
    };
    /** When the event was published. */
    publishTime?: Date | undefined;
    /** The delay it was given (zero for none). */
    delay?: Duration | undefined;
    /** Priority given at publish. */
    priority: number;
    /** Attempt number, 1 on the first delivery. */
    attempt: number;
    /** When this lease expires unless acked or extended. */
    ackDeadline?: Date | undefined;
    /** The subscription it was delivered for (empty on an ephemeral tail). */
    subscription: string;
    /** Ordering key given at publish. */
    orderingKey: string;
    /** The deduplication id given at publish. */
    dedupId: string;
}
export interface Delivery_HeadersEntry {
    key: string;
    value: string;
}
/** AckRequest acknowledges deliveries. */
export interface AckRequest {
    /** Ack ids from deliveries. */
    ackIds: string[];
}
/** AckResponse says which ack ids were not applied. */
export interface AckResponse {
    /** Ack ids that were unknown, or whose lease had expired or moved on. */
    notAppliedAckIds: string[];
}
/** NackRequest gives deliveries back. */
export interface NackRequest {
    /** Ack ids from deliveries. */
    ackIds: string[];
    /** Retry after this delay instead of the subscription's backoff. */
    delay?: Duration | undefined;
    /** Dead-letter now instead of retrying. */
    terminal: boolean;
    /** Why the handler failed, kept in the attempt history. */
    error: string;
}
/** NackResponse says which ack ids were not applied. */
export interface NackResponse {
    /** Ack ids that were unknown, or whose lease had expired or moved on. */
    notAppliedAckIds: string[];
}
/** ExtendAckDeadlineRequest keeps leases for longer. */
export interface ExtendAckDeadlineRequest {
    /** Ack ids from deliveries. */
    ackIds: string[];
    /** The new deadline, counted from now (1 s .. 12 h). */
    extension?: Duration | undefined;
}
/** ExtendAckDeadlineResponse says which ack ids were not applied. */
export interface ExtendAckDeadlineResponse {
    /** Ack ids that were unknown, or whose lease had expired or moved on. */
    notAppliedAckIds: string[];
}
/** RetryPolicy says how long a failed delivery waits before it is ready again. */
export interface RetryPolicy {
    /** The first retry's delay (default 1 s). */
    minBackoff?: Duration | undefined;
    /** The longest delay (default 10 min). */
    maxBackoff?: Duration | undefined;
    /**
     * An explicit table instead of the exponential backoff: the delay after
     * attempt n is delays[n-1], and the last entry repeats. At most 100 entries.
     */
    delays: Duration[];
}
/** Subscription is a durable, named subscription and its settings. */
export interface Subscription {
    /** Unique name: 1 to 255 letters, digits and `._-/:`. */
    name: string;
    /** Name patterns: exact, `*` one segment, `>` the rest. At least one. */
    filter: string[];
    /** Time a consumer has to ack (default 30 s, 1 s .. 12 h). */
    ackDeadline?: Duration | undefined;
    /** Failed attempts before dead-lettering (default 20, 1 .. 1000). */
    maxAttempts: number;
    /** Backoff between attempts. */
    retryPolicy?: RetryPolicy | undefined;
    /** Concurrency limit across all consumers; 0 means unlimited. */
    maxInFlight: number;
    /** FIFO per ordering key. */
    ordered: boolean;
    /** Where a new subscription starts (on create only). */
    startPosition: StartPosition;
    /** With START_POSITION_TIME: the earliest publish time to deliver. */
    startTime?: Date | undefined;
    /** How long acked and dead deliveries stay queryable (default 7 days). */
    retention?: Duration | undefined;
    /** When it was created (output only). */
    createTime?: Date | undefined;
    /**
     * Deliveries of events older than this are dead-lettered (reason EXPIRED)
     * instead of being delivered or retried. Unset: no maximum age.
     */
    maxAge?: Duration | undefined;
    /**
     * Concurrency limit per key (0 .. 100,000; 0 means no cap): at most this
     * many deliveries of one key are in flight at once, across all consumers
     * and brokers, while other keys flow. A delivery holds one of its key's
     * slots while it is in flight or ready to be; a retry backing off, or an
     * event delayed, holds none until it is due (then it waits for a free slot,
     * first in line). Past the cap, deliveries are BLOCKED and let through in
     * publish order as slots free. Events without a key are not capped. It
     * applies beside `max_in_flight`. With `ordered`, only 0 or 1 (ordered is
     * the cap of 1 with FIFO order, where a retry keeps its key's slot). A
     * change lets blocked deliveries through at once when raised; when
     * lowered, a key drains down to the new cap.
     */
    maxInFlightPerKey: number;
    /**
     * The header whose value is an event's key, for `ordered` and
     * `max_in_flight_per_key`; empty: the event's `ordering_key`. At most 255
     * characters; needs `ordered` or `max_in_flight_per_key`. A value longer
     * than 255 characters is keyed by its SHA-256 digest. A change applies to
     * events that have not yet been given a delivery.
     */
    keyHeader: string;
}
/** CreateSubscriptionRequest creates a subscription. */
export interface CreateSubscriptionRequest {
    /** The subscription; unset settings take their defaults. */
    subscription?: Subscription | undefined;
}
/** CreateSubscriptionResponse returns the created subscription. */
export interface CreateSubscriptionResponse {
    /** The subscription with defaults filled in. */
    subscription?: Subscription | undefined;
}
/** GetSubscriptionRequest names a subscription. */
export interface GetSubscriptionRequest {
    /** Subscription name. */
    name: string;
}
/** GetSubscriptionResponse returns a subscription. */
export interface GetSubscriptionResponse {
    /** The subscription. */
    subscription?: Subscription | undefined;
}
/** ListSubscriptionsRequest asks for a page of subscriptions. */
export interface ListSubscriptionsRequest {
    /** Page size (default 100, at most 1,000). */
    pageSize: number;
    /** Token from a previous response. */
    pageToken: string;
}
/** ListSubscriptionsResponse is a page of subscriptions, by name. */
export interface ListSubscriptionsResponse {
    /** The subscriptions. */
    subscriptions: Subscription[];
    /** Token for the next page; empty on the last. */
    nextPageToken: string;
}
/** UpdateSubscriptionRequest changes settings of a subscription. */
export interface UpdateSubscriptionRequest {
    /** The subscription, by name, with the new settings. */
    subscription?: Subscription | undefined;
    /** Field paths to update (`filter`, `ack_deadline`, ...). */
    updateMask: string[];
}
/** UpdateSubscriptionResponse returns the updated subscription. */
export interface UpdateSubscriptionResponse {
    /** The subscription. */
    subscription?: Subscription | undefined;
}
/** DeleteSubscriptionRequest names a subscription. */
export interface DeleteSubscriptionRequest {
    /** Subscription name. */
    name: string;
}
/** DeleteSubscriptionResponse is empty. */
export interface DeleteSubscriptionResponse {
}
/** GetEventRequest names an event. */
export interface GetEventRequest {
    /** Event id. */
    eventId: string;
}
/** Attempt is one past delivery attempt. */
export interface Attempt {
    /** Attempt number. */
    attempt: number;
    /** When it was delivered. */
    deliveredTime?: Date | undefined;
    /** When it ended. */
    endTime?: Date | undefined;
    /** Consumer it was delivered to. */
    consumer: string;
    /** How it ended. */
    outcome: AttemptOutcome;
    /** The error given with a nack. */
    error: string;
}
/** DeliveryStatus is an event's delivery in one subscription. */
export interface DeliveryStatus {
    /** Subscription name. */
    subscription: string;
    /** Where the delivery stands. */
    state: DeliveryState;
    /** Attempts made so far. */
    attempts: number;
    /** When it becomes ready (scheduled) or its lease ends (in flight). */
    nextTime?: Date | undefined;
    /**
     * Consumer holding it (in flight): its consumer_name (or address) and a
     * `#N` suffix that tells apart consumers of the same name.
     */
    consumer: string;
    /** Why it is dead. */
    deadReason: DeadReason;
    /** The last nack's error. */
    lastError: string;
    /**
     * Past failed attempts (nacked, expired, released), oldest first, the last
     * 20. An acknowledged attempt is not listed: state ACKED and `attempts` say
     * which attempt succeeded.
     */
    history: Attempt[];
    /** A sentence saying why the delivery is where it is. */
    reason: string;
    /**
     * When the delivery last changed state: for a dead letter, when it died; for
     * an acknowledged one, when it was acked.
     */
    updateTime?: Date | undefined;
    /**
     * The delivery's key in a keyed subscription (ordered, or with
     * max_in_flight_per_key): its ordering key, or its key header's value.
     */
    key: string;
    /** For a BLOCKED delivery: what holds its key's slots. */
    keyWait?: KeyWait | undefined;
}
/** KeyWait says why a delivery waits for its key: every slot of the key is held. */
export interface KeyWait {
    /** The key. */
    key: string;
    /**
     * Deliveries of the key holding a slot now: in flight, or ready to be (in
     * an ordered subscription also one backing off before a retry).
     */
    inFlight: number;
    /**
     * Slots per key: the subscription's max_in_flight_per_key, or 1 when it is
     * ordered.
     */
    limit: number;
}
/** StoredEvent is an event as stored by the broker. */
export interface StoredEvent {
    /** Broker-assigned id. */
    eventId: string;
    /** The event as published (name lower-cased). */
    event?: Event | undefined;
    /** When it was published. */
    publishTime?: Date | undefined;
    /**
     * The W3C trace id the event carries in its `traceparent` header: 32 lowercase
     * hex digits, so that the publish and its handling can be found in a tracing
     * system; empty when it carries no valid `traceparent`.
     */
    traceId: string;
}
/** GetEventResponse is an event and its deliveries. */
export interface GetEventResponse {
    /** The event. */
    event?: StoredEvent | undefined;
    /** Its delivery in each subscription it matched. */
    deliveries: DeliveryStatus[];
}
/** DeadLetter is a dead-lettered delivery. */
export interface DeadLetter {
    /** The event. */
    event?: StoredEvent | undefined;
    /** The delivery, with its reason and history. */
    delivery?: DeliveryStatus | undefined;
}
/** ListDeadLettersRequest asks for a page of dead letters. */
export interface ListDeadLettersRequest {
    /** Subscription name. */
    subscription: string;
    /** Page size (default 100, at most 1,000). */
    pageSize: number;
    /** Token from a previous response. */
    pageToken: string;
    /** Only events with this name. */
    name: string;
    /** Only this reason. */
    reason: DeadReason;
}
/** ListDeadLettersResponse is a page of dead letters. */
export interface ListDeadLettersResponse {
    /** The dead letters, oldest first. */
    deadLetters: DeadLetter[];
    /** Token for the next page; empty on the last. */
    nextPageToken: string;
}
/** RedriveDeadLettersRequest makes dead letters ready again. */
export interface RedriveDeadLettersRequest {
    /** Subscription name. */
    subscription: string;
    /** Only these events; empty with `all` for every dead letter. */
    eventIds: string[];
    /** Only events with this name. */
    name: string;
    /** Only this reason. */
    reason: DeadReason;
    /** Redrive every dead letter matching name and reason. */
    all: boolean;
}
/** RedriveDeadLettersResponse counts redriven deliveries. */
export interface RedriveDeadLettersResponse {
    /** How many deliveries were made ready again. */
    redrivenCount: number;
}
/** SeekRequest moves a subscription to a time. */
export interface SeekRequest {
    /** Subscription name. */
    subscription: string;
    /**
     * Deliver again everything published at or after this time, and skip
     * everything before it.
     */
    time?: Date | undefined;
}
/** SeekResponse says what the seek changed. */
export interface SeekResponse {
    /**
     * Deliveries made ready again: published at or after the time, and already
     * acked or dead (or new to the subscription).
     */
    replayed: number;
    /**
     * Deliveries of events published before the time that were still waiting,
     * now marked acknowledged without being delivered.
     */
    skipped: number;
}
/** GetStatsRequest asks for stats. */
export interface GetStatsRequest {
    /** Only this subscription; empty for all. */
    subscription: string;
}
/** SubscriptionStats counts one subscription's deliveries. */
export interface SubscriptionStats {
    /** Subscription name. */
    subscription: string;
    /** Waiting for their time. */
    scheduled: number;
    /** Ready to deliver. */
    ready: number;
    /** Leased to consumers. */
    inFlight: number;
    /** Acknowledged (within retention). */
    acked: number;
    /** Dead-lettered. */
    dead: number;
    /** Consumers connected to this broker process. */
    consumers: number;
    /** Acks per second over the last minute (this broker process). */
    ackRate: number;
    /** Deliveries per second over the last minute (this broker process). */
    deliveryRate: number;
    /** Publish time of the oldest ready or scheduled delivery. */
    oldestWaitingTime?: Date | undefined;
}
/** GetStatsResponse has stats per subscription. */
export interface GetStatsResponse {
    /** One entry per subscription, by name. */
    subscriptions: SubscriptionStats[];
    /** Events stored. */
    events: number;
    /** Events published per second over the last minute (this broker process). */
    publishRate: number;
}
export declare const Event: MessageFns<Event>;
export declare const Event_HeadersEntry: MessageFns<Event_HeadersEntry>;
export declare const PublishResult: MessageFns<PublishResult>;
export declare const PublishRequest: MessageFns<PublishRequest>;
export declare const PublishResponse: MessageFns<PublishResponse>;
export declare const BatchPublishRequest: MessageFns<BatchPublishRequest>;
export declare const BatchPublishResponse: MessageFns<BatchPublishResponse>;
export declare const SubscribeRequest: MessageFns<SubscribeRequest>;
export declare const SubscribeResponse: MessageFns<SubscribeResponse>;
export declare const Delivery: MessageFns<Delivery>;
export declare const Delivery_HeadersEntry: MessageFns<Delivery_HeadersEntry>;
export declare const AckRequest: MessageFns<AckRequest>;
export declare const AckResponse: MessageFns<AckResponse>;
export declare const NackRequest: MessageFns<NackRequest>;
export declare const NackResponse: MessageFns<NackResponse>;
export declare const ExtendAckDeadlineRequest: MessageFns<ExtendAckDeadlineRequest>;
export declare const ExtendAckDeadlineResponse: MessageFns<ExtendAckDeadlineResponse>;
export declare const RetryPolicy: MessageFns<RetryPolicy>;
export declare const Subscription: MessageFns<Subscription>;
export declare const CreateSubscriptionRequest: MessageFns<CreateSubscriptionRequest>;
export declare const CreateSubscriptionResponse: MessageFns<CreateSubscriptionResponse>;
export declare const GetSubscriptionRequest: MessageFns<GetSubscriptionRequest>;
export declare const GetSubscriptionResponse: MessageFns<GetSubscriptionResponse>;
export declare const ListSubscriptionsRequest: MessageFns<ListSubscriptionsRequest>;
export declare const ListSubscriptionsResponse: MessageFns<ListSubscriptionsResponse>;
export declare const UpdateSubscriptionRequest: MessageFns<UpdateSubscriptionRequest>;
export declare const UpdateSubscriptionResponse: MessageFns<UpdateSubscriptionResponse>;
export declare const DeleteSubscriptionRequest: MessageFns<DeleteSubscriptionRequest>;
export declare const DeleteSubscriptionResponse: MessageFns<DeleteSubscriptionResponse>;
export declare const GetEventRequest: MessageFns<GetEventRequest>;
export declare const Attempt: MessageFns<Attempt>;
export declare const DeliveryStatus: MessageFns<DeliveryStatus>;
export declare const KeyWait: MessageFns<KeyWait>;
export declare const StoredEvent: MessageFns<StoredEvent>;
export declare const GetEventResponse: MessageFns<GetEventResponse>;
export declare const DeadLetter: MessageFns<DeadLetter>;
export declare const ListDeadLettersRequest: MessageFns<ListDeadLettersRequest>;
export declare const ListDeadLettersResponse: MessageFns<ListDeadLettersResponse>;
export declare const RedriveDeadLettersRequest: MessageFns<RedriveDeadLettersRequest>;
export declare const RedriveDeadLettersResponse: MessageFns<RedriveDeadLettersResponse>;
export declare const SeekRequest: MessageFns<SeekRequest>;
export declare const SeekResponse: MessageFns<SeekResponse>;
export declare const GetStatsRequest: MessageFns<GetStatsRequest>;
export declare const SubscriptionStats: MessageFns<SubscriptionStats>;
export declare const GetStatsResponse: MessageFns<GetStatsResponse>;
/**
 * EventBrokerService is the whole broker API. Every RPC can be called from
 * JSON (grpcurl) with server reflection; none needs the proto files.
 */
export type EventBrokerServiceService = typeof EventBrokerServiceService;
export declare const EventBrokerServiceService: {
    /** Publish stores one event and fans it out to every matching subscription. */
    readonly publish: {
        readonly path: "/eventbroker.v1.EventBrokerService/Publish";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: PublishRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => PublishRequest;
        readonly responseSerialize: (value: PublishResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => PublishResponse;
    };
    /** BatchPublish stores many events in one transaction: all of them or none. */
    readonly batchPublish: {
        readonly path: "/eventbroker.v1.EventBrokerService/BatchPublish";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: BatchPublishRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => BatchPublishRequest;
        readonly responseSerialize: (value: BatchPublishResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => BatchPublishResponse;
    };
    /**
     * Subscribe attaches a consumer to a subscription and streams deliveries
     * in batches, never more than the consumer's credit at once. Without a
     * subscription name it is an ephemeral tail of new events matching a filter.
     * Once a consumer is attached to a subscription, and before any delivery,
     * the response headers arrive: `eventbroker-attached: 1` and
     * `eventbroker-consumer: <the consumer's id in attempt history>`.
     */
    readonly subscribe: {
        readonly path: "/eventbroker.v1.EventBrokerService/Subscribe";
        readonly requestStream: false;
        readonly responseStream: true;
        readonly requestSerialize: (value: SubscribeRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => SubscribeRequest;
        readonly responseSerialize: (value: SubscribeResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => SubscribeResponse;
    };
    /** Ack acknowledges deliveries by their ack ids. */
    readonly ack: {
        readonly path: "/eventbroker.v1.EventBrokerService/Ack";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: AckRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => AckRequest;
        readonly responseSerialize: (value: AckResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => AckResponse;
    };
    /**
     * Nack gives deliveries back: retried after the backoff or an explicit
     * delay, or dead-lettered now.
     */
    readonly nack: {
        readonly path: "/eventbroker.v1.EventBrokerService/Nack";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: NackRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => NackRequest;
        readonly responseSerialize: (value: NackResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => NackResponse;
    };
    /** ExtendAckDeadline keeps a lease for longer. */
    readonly extendAckDeadline: {
        readonly path: "/eventbroker.v1.EventBrokerService/ExtendAckDeadline";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: ExtendAckDeadlineRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => ExtendAckDeadlineRequest;
        readonly responseSerialize: (value: ExtendAckDeadlineResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => ExtendAckDeadlineResponse;
    };
    /** CreateSubscription creates a durable, named subscription. */
    readonly createSubscription: {
        readonly path: "/eventbroker.v1.EventBrokerService/CreateSubscription";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: CreateSubscriptionRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => CreateSubscriptionRequest;
        readonly responseSerialize: (value: CreateSubscriptionResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => CreateSubscriptionResponse;
    };
    /** GetSubscription returns one subscription. */
    readonly getSubscription: {
        readonly path: "/eventbroker.v1.EventBrokerService/GetSubscription";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: GetSubscriptionRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => GetSubscriptionRequest;
        readonly responseSerialize: (value: GetSubscriptionResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => GetSubscriptionResponse;
    };
    /** ListSubscriptions lists subscriptions by name, a page at a time. */
    readonly listSubscriptions: {
        readonly path: "/eventbroker.v1.EventBrokerService/ListSubscriptions";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: ListSubscriptionsRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => ListSubscriptionsRequest;
        readonly responseSerialize: (value: ListSubscriptionsResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => ListSubscriptionsResponse;
    };
    /** UpdateSubscription changes the settings named in the update mask. */
    readonly updateSubscription: {
        readonly path: "/eventbroker.v1.EventBrokerService/UpdateSubscription";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: UpdateSubscriptionRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => UpdateSubscriptionRequest;
        readonly responseSerialize: (value: UpdateSubscriptionResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => UpdateSubscriptionResponse;
    };
    /** DeleteSubscription deletes a subscription and its pending deliveries. */
    readonly deleteSubscription: {
        readonly path: "/eventbroker.v1.EventBrokerService/DeleteSubscription";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: DeleteSubscriptionRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => DeleteSubscriptionRequest;
        readonly responseSerialize: (value: DeleteSubscriptionResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => DeleteSubscriptionResponse;
    };
    /** GetEvent returns an event and its delivery state in each subscription. */
    readonly getEvent: {
        readonly path: "/eventbroker.v1.EventBrokerService/GetEvent";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: GetEventRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => GetEventRequest;
        readonly responseSerialize: (value: GetEventResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => GetEventResponse;
    };
    /** ListDeadLetters lists a subscription's dead-lettered deliveries. */
    readonly listDeadLetters: {
        readonly path: "/eventbroker.v1.EventBrokerService/ListDeadLetters";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: ListDeadLettersRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => ListDeadLettersRequest;
        readonly responseSerialize: (value: ListDeadLettersResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => ListDeadLettersResponse;
    };
    /** RedriveDeadLetters makes dead-lettered deliveries ready again. */
    readonly redriveDeadLetters: {
        readonly path: "/eventbroker.v1.EventBrokerService/RedriveDeadLetters";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: RedriveDeadLettersRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => RedriveDeadLettersRequest;
        readonly responseSerialize: (value: RedriveDeadLettersResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => RedriveDeadLettersResponse;
    };
    /** Seek moves a subscription back (replay) or forward (skip) to a time. */
    readonly seek: {
        readonly path: "/eventbroker.v1.EventBrokerService/Seek";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: SeekRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => SeekRequest;
        readonly responseSerialize: (value: SeekResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => SeekResponse;
    };
    /** GetStats returns delivery counts and rates per subscription. */
    readonly getStats: {
        readonly path: "/eventbroker.v1.EventBrokerService/GetStats";
        readonly requestStream: false;
        readonly responseStream: false;
        readonly requestSerialize: (value: GetStatsRequest) => Buffer;
        readonly requestDeserialize: (value: Buffer) => GetStatsRequest;
        readonly responseSerialize: (value: GetStatsResponse) => Buffer;
        readonly responseDeserialize: (value: Buffer) => GetStatsResponse;
    };
};
export interface EventBrokerServiceServer extends UntypedServiceImplementation {
    /** Publish stores one event and fans it out to every matching subscription. */
    publish: handleUnaryCall<PublishRequest, PublishResponse>;
    /** BatchPublish stores many events in one transaction: all of them or none. */
    batchPublish: handleUnaryCall<BatchPublishRequest, BatchPublishResponse>;
    /**
     * Subscribe attaches a consumer to a subscription and streams deliveries
     * in batches, never more than the consumer's credit at once. Without a
     * subscription name it is an ephemeral tail of new events matching a filter.
     * Once a consumer is attached to a subscription, and before any delivery,
     * the response headers arrive: `eventbroker-attached: 1` and
     * `eventbroker-consumer: <the consumer's id in attempt history>`.
     */
    subscribe: handleServerStreamingCall<SubscribeRequest, SubscribeResponse>;
    /** Ack acknowledges deliveries by their ack ids. */
    ack: handleUnaryCall<AckRequest, AckResponse>;
    /**
     * Nack gives deliveries back: retried after the backoff or an explicit
     * delay, or dead-lettered now.
     */
    nack: handleUnaryCall<NackRequest, NackResponse>;
    /** ExtendAckDeadline keeps a lease for longer. */
    extendAckDeadline: handleUnaryCall<ExtendAckDeadlineRequest, ExtendAckDeadlineResponse>;
    /** CreateSubscription creates a durable, named subscription. */
    createSubscription: handleUnaryCall<CreateSubscriptionRequest, CreateSubscriptionResponse>;
    /** GetSubscription returns one subscription. */
    getSubscription: handleUnaryCall<GetSubscriptionRequest, GetSubscriptionResponse>;
    /** ListSubscriptions lists subscriptions by name, a page at a time. */
    listSubscriptions: handleUnaryCall<ListSubscriptionsRequest, ListSubscriptionsResponse>;
    /** UpdateSubscription changes the settings named in the update mask. */
    updateSubscription: handleUnaryCall<UpdateSubscriptionRequest, UpdateSubscriptionResponse>;
    /** DeleteSubscription deletes a subscription and its pending deliveries. */
    deleteSubscription: handleUnaryCall<DeleteSubscriptionRequest, DeleteSubscriptionResponse>;
    /** GetEvent returns an event and its delivery state in each subscription. */
    getEvent: handleUnaryCall<GetEventRequest, GetEventResponse>;
    /** ListDeadLetters lists a subscription's dead-lettered deliveries. */
    listDeadLetters: handleUnaryCall<ListDeadLettersRequest, ListDeadLettersResponse>;
    /** RedriveDeadLetters makes dead-lettered deliveries ready again. */
    redriveDeadLetters: handleUnaryCall<RedriveDeadLettersRequest, RedriveDeadLettersResponse>;
    /** Seek moves a subscription back (replay) or forward (skip) to a time. */
    seek: handleUnaryCall<SeekRequest, SeekResponse>;
    /** GetStats returns delivery counts and rates per subscription. */
    getStats: handleUnaryCall<GetStatsRequest, GetStatsResponse>;
}
export interface EventBrokerServiceClient extends Client {
    /** Publish stores one event and fans it out to every matching subscription. */
    publish(request: PublishRequest, callback: (error: ServiceError | null, response: PublishResponse) => void): ClientUnaryCall;
    publish(request: PublishRequest, metadata: Metadata, callback: (error: ServiceError | null, response: PublishResponse) => void): ClientUnaryCall;
    publish(request: PublishRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: PublishResponse) => void): ClientUnaryCall;
    /** BatchPublish stores many events in one transaction: all of them or none. */
    batchPublish(request: BatchPublishRequest, callback: (error: ServiceError | null, response: BatchPublishResponse) => void): ClientUnaryCall;
    batchPublish(request: BatchPublishRequest, metadata: Metadata, callback: (error: ServiceError | null, response: BatchPublishResponse) => void): ClientUnaryCall;
    batchPublish(request: BatchPublishRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: BatchPublishResponse) => void): ClientUnaryCall;
    /**
     * Subscribe attaches a consumer to a subscription and streams deliveries
     * in batches, never more than the consumer's credit at once. Without a
     * subscription name it is an ephemeral tail of new events matching a filter.
     * Once a consumer is attached to a subscription, and before any delivery,
     * the response headers arrive: `eventbroker-attached: 1` and
     * `eventbroker-consumer: <the consumer's id in attempt history>`.
     */
    subscribe(request: SubscribeRequest, options?: Partial<CallOptions>): ClientReadableStream<SubscribeResponse>;
    subscribe(request: SubscribeRequest, metadata?: Metadata, options?: Partial<CallOptions>): ClientReadableStream<SubscribeResponse>;
    /** Ack acknowledges deliveries by their ack ids. */
    ack(request: AckRequest, callback: (error: ServiceError | null, response: AckResponse) => void): ClientUnaryCall;
    ack(request: AckRequest, metadata: Metadata, callback: (error: ServiceError | null, response: AckResponse) => void): ClientUnaryCall;
    ack(request: AckRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: AckResponse) => void): ClientUnaryCall;
    /**
     * Nack gives deliveries back: retried after the backoff or an explicit
     * delay, or dead-lettered now.
     */
    nack(request: NackRequest, callback: (error: ServiceError | null, response: NackResponse) => void): ClientUnaryCall;
    nack(request: NackRequest, metadata: Metadata, callback: (error: ServiceError | null, response: NackResponse) => void): ClientUnaryCall;
    nack(request: NackRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: NackResponse) => void): ClientUnaryCall;
    /** ExtendAckDeadline keeps a lease for longer. */
    extendAckDeadline(request: ExtendAckDeadlineRequest, callback: (error: ServiceError | null, response: ExtendAckDeadlineResponse) => void): ClientUnaryCall;
    extendAckDeadline(request: ExtendAckDeadlineRequest, metadata: Metadata, callback: (error: ServiceError | null, response: ExtendAckDeadlineResponse) => void): ClientUnaryCall;
    extendAckDeadline(request: ExtendAckDeadlineRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: ExtendAckDeadlineResponse) => void): ClientUnaryCall;
    /** CreateSubscription creates a durable, named subscription. */
    createSubscription(request: CreateSubscriptionRequest, callback: (error: ServiceError | null, response: CreateSubscriptionResponse) => void): ClientUnaryCall;
    createSubscription(request: CreateSubscriptionRequest, metadata: Metadata, callback: (error: ServiceError | null, response: CreateSubscriptionResponse) => void): ClientUnaryCall;
    createSubscription(request: CreateSubscriptionRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: CreateSubscriptionResponse) => void): ClientUnaryCall;
    /** GetSubscription returns one subscription. */
    getSubscription(request: GetSubscriptionRequest, callback: (error: ServiceError | null, response: GetSubscriptionResponse) => void): ClientUnaryCall;
    getSubscription(request: GetSubscriptionRequest, metadata: Metadata, callback: (error: ServiceError | null, response: GetSubscriptionResponse) => void): ClientUnaryCall;
    getSubscription(request: GetSubscriptionRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: GetSubscriptionResponse) => void): ClientUnaryCall;
    /** ListSubscriptions lists subscriptions by name, a page at a time. */
    listSubscriptions(request: ListSubscriptionsRequest, callback: (error: ServiceError | null, response: ListSubscriptionsResponse) => void): ClientUnaryCall;
    listSubscriptions(request: ListSubscriptionsRequest, metadata: Metadata, callback: (error: ServiceError | null, response: ListSubscriptionsResponse) => void): ClientUnaryCall;
    listSubscriptions(request: ListSubscriptionsRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: ListSubscriptionsResponse) => void): ClientUnaryCall;
    /** UpdateSubscription changes the settings named in the update mask. */
    updateSubscription(request: UpdateSubscriptionRequest, callback: (error: ServiceError | null, response: UpdateSubscriptionResponse) => void): ClientUnaryCall;
    updateSubscription(request: UpdateSubscriptionRequest, metadata: Metadata, callback: (error: ServiceError | null, response: UpdateSubscriptionResponse) => void): ClientUnaryCall;
    updateSubscription(request: UpdateSubscriptionRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: UpdateSubscriptionResponse) => void): ClientUnaryCall;
    /** DeleteSubscription deletes a subscription and its pending deliveries. */
    deleteSubscription(request: DeleteSubscriptionRequest, callback: (error: ServiceError | null, response: DeleteSubscriptionResponse) => void): ClientUnaryCall;
    deleteSubscription(request: DeleteSubscriptionRequest, metadata: Metadata, callback: (error: ServiceError | null, response: DeleteSubscriptionResponse) => void): ClientUnaryCall;
    deleteSubscription(request: DeleteSubscriptionRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: DeleteSubscriptionResponse) => void): ClientUnaryCall;
    /** GetEvent returns an event and its delivery state in each subscription. */
    getEvent(request: GetEventRequest, callback: (error: ServiceError | null, response: GetEventResponse) => void): ClientUnaryCall;
    getEvent(request: GetEventRequest, metadata: Metadata, callback: (error: ServiceError | null, response: GetEventResponse) => void): ClientUnaryCall;
    getEvent(request: GetEventRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: GetEventResponse) => void): ClientUnaryCall;
    /** ListDeadLetters lists a subscription's dead-lettered deliveries. */
    listDeadLetters(request: ListDeadLettersRequest, callback: (error: ServiceError | null, response: ListDeadLettersResponse) => void): ClientUnaryCall;
    listDeadLetters(request: ListDeadLettersRequest, metadata: Metadata, callback: (error: ServiceError | null, response: ListDeadLettersResponse) => void): ClientUnaryCall;
    listDeadLetters(request: ListDeadLettersRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: ListDeadLettersResponse) => void): ClientUnaryCall;
    /** RedriveDeadLetters makes dead-lettered deliveries ready again. */
    redriveDeadLetters(request: RedriveDeadLettersRequest, callback: (error: ServiceError | null, response: RedriveDeadLettersResponse) => void): ClientUnaryCall;
    redriveDeadLetters(request: RedriveDeadLettersRequest, metadata: Metadata, callback: (error: ServiceError | null, response: RedriveDeadLettersResponse) => void): ClientUnaryCall;
    redriveDeadLetters(request: RedriveDeadLettersRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: RedriveDeadLettersResponse) => void): ClientUnaryCall;
    /** Seek moves a subscription back (replay) or forward (skip) to a time. */
    seek(request: SeekRequest, callback: (error: ServiceError | null, response: SeekResponse) => void): ClientUnaryCall;
    seek(request: SeekRequest, metadata: Metadata, callback: (error: ServiceError | null, response: SeekResponse) => void): ClientUnaryCall;
    seek(request: SeekRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: SeekResponse) => void): ClientUnaryCall;
    /** GetStats returns delivery counts and rates per subscription. */
    getStats(request: GetStatsRequest, callback: (error: ServiceError | null, response: GetStatsResponse) => void): ClientUnaryCall;
    getStats(request: GetStatsRequest, metadata: Metadata, callback: (error: ServiceError | null, response: GetStatsResponse) => void): ClientUnaryCall;
    getStats(request: GetStatsRequest, metadata: Metadata, options: Partial<CallOptions>, callback: (error: ServiceError | null, response: GetStatsResponse) => void): ClientUnaryCall;
}
export declare const EventBrokerServiceClient: {
    new (address: string, credentials: ChannelCredentials, options?: Partial<ClientOptions>): EventBrokerServiceClient;
    service: typeof EventBrokerServiceService;
    serviceName: string;
};
type Builtin = Date | Function | Uint8Array | string | number | boolean | undefined;
export type DeepPartial<T> = T extends Builtin ? T : T extends globalThis.Array<infer U> ? globalThis.Array<DeepPartial<U>> : T extends ReadonlyArray<infer U> ? ReadonlyArray<DeepPartial<U>> : T extends {} ? {
    [K in keyof T]?: DeepPartial<T[K]>;
} : Partial<T>;
type KeysOfUnion<T> = T extends T ? keyof T : never;
export type Exact<P, I extends P> = P extends Builtin ? P : P & {
    [K in keyof P]: Exact<P[K], I[K]>;
} & {
    [K in Exclude<keyof I, KeysOfUnion<P>>]: never;
};
export interface MessageFns<T> {
    encode(message: T, writer?: BinaryWriter): BinaryWriter;
    decode(input: BinaryReader | Uint8Array, length?: number): T;
    fromJSON(object: any): T;
    toJSON(message: T): unknown;
    create<I extends Exact<DeepPartial<T>, I>>(base?: I): T;
    fromPartial<I extends Exact<DeepPartial<T>, I>>(object: I): T;
}
export {};

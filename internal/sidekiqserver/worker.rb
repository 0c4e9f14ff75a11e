# Loaded by Sidekiq (sidekiq -r worker.rb) for geocursor's
# internal/sidekiqserver: a stand-in for GitLab's Geo::EventWorker that
# records every job it performs, one JSON line per job, in the file named by
# $GEOCURSOR_SIDEKIQ_RECORD. The Go side sets $REDIS_URL and, for a key
# prefix, $GEOCURSOR_SIDEKIQ_NAMESPACE.
require "json"
require "sidekiq"

# The log is a file: write each line as it comes, so that a killed process
# leaves its last words behind.
$stdout.sync = true
$stderr.sync = true

# redis-rb 4.8 warns on every call that redis-namespace 1.9 makes the
# Redis 5 way (brpop's positional timeout, sadd's return value), flooding
# the log of a namespaced Sidekiq.
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)

module GeocursorSidekiqServer
  RECORD = ENV.fetch("GEOCURSOR_SIDEKIQ_RECORD")
  RECORD_LOCK = Mutex.new

  # Appends one JSON line. Processor threads share the file: the mutex
  # keeps lines whole, and the flush hands each to the kernel at once.
  def self.record(entry)
    line = JSON.generate(entry) + "\n"
    RECORD_LOCK.synchronize do
      File.open(RECORD, "a") do |f|
        f.write(line)
        f.flush
      end
    end
  end

  # Server middleware that hands the job hash and the queue it was fetched
  # from to the worker: perform sees only the job's arguments and jid.
  class JobMiddleware
    def call(worker, job, queue)
      if worker.respond_to?(:geocursor_job=)
        worker.geocursor_job = job
        worker.geocursor_queue = queue
      end
      yield
    end
  end

  def self.redis_options
    opts = { url: ENV.fetch("REDIS_URL") }
    ns = ENV.fetch("GEOCURSOR_SIDEKIQ_NAMESPACE", "")
    opts[:namespace] = ns unless ns.empty?
    opts
  end
end

Sidekiq.configure_server do |config|
  config.redis = GeocursorSidekiqServer.redis_options
  config.server_middleware do |chain|
    chain.add GeocursorSidekiqServer::JobMiddleware
  end
end

Sidekiq.configure_client do |config|
  config.redis = GeocursorSidekiqServer.redis_options
end

module Geo
  class EventWorker
    include Sidekiq::Worker

    attr_accessor :geocursor_job, :geocursor_queue

    def perform(replicable_name, event_name, payload)
      job = geocursor_job || {}
      GeocursorSidekiqServer.record(
        "replicable_name" => replicable_name,
        "event_name" => event_name,
        "payload" => payload,
        "jid" => jid,
        "queue" => geocursor_queue || job["queue"],
        "correlation_id" => job["correlation_id"],
        "performed_at" => Time.now.to_f,
        "enqueued_at" => job["enqueued_at"],
        "created_at" => job["created_at"]
      )
    end
  end
end

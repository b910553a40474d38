// Export jobs from Go: the six job RPCs on a job of the emulator's channels, and their errors
// read with status.FromError(err).Details().
package conformance

import (
	"errors"
	"io"
	"reflect"
	"sort"
	"testing"

	pb "github.com/stream-export/stream-export/gen/go/streamexport/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// jobChannels are the channels of the emulator's data set that a plain export includes
// (messaging:archived is soft-deleted; team:firehose holds the heavy user's ten thousand messages).
var jobChannels = [][2]string{
	{"messaging", "general"},
	{"messaging", "truncated"},
	{"messaging", "dm-a"},
	{"messaging", "dm-b"},
	{"messaging", "dm-c"},
	{"livestream", "launch"},
	{"team", "engineering"},
	{"commerce", "order-1001"},
	{"commerce", "order-1002"},
}

var jobTerminal = map[pb.ExportJobState]bool{
	pb.ExportJobState_EXPORT_JOB_STATE_SUCCEEDED: true,
	pb.ExportJobState_EXPORT_JOB_STATE_FAILED:    true,
	pb.ExportJobState_EXPORT_JOB_STATE_CANCELLED: true,
}

// watchJobToEnd reads a WatchExportJob stream to its end (OK) and checks the stream's
// guarantees; returns the events.
func watchJobToEnd(t *testing.T, jobID string) []*pb.ExportJobEvent {
	t.Helper()
	stream, err := client.WatchExportJob(ctx(t), &pb.WatchExportJobRequest{JobId: jobID})
	must(t, err, "WatchExportJob")
	var events []*pb.ExportJobEvent
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		must(t, err, "WatchExportJob stream")
		events = append(events, event)
	}
	if len(events) == 0 {
		t.Fatal("a stream has at least its snapshot")
	}
	if events[0].GetType() != pb.TaskEvent_EVENT_TYPE_SNAPSHOT {
		t.Fatalf("first event %v, want a SNAPSHOT", events[0].GetType())
	}
	for i, event := range events {
		if event.GetSequence() != uint64(i+1) {
			t.Fatalf("event %d has sequence %d", i, event.GetSequence())
		}
		if i > 0 && event.GetType() == pb.TaskEvent_EVENT_TYPE_SNAPSHOT {
			t.Fatalf("event %d is a second SNAPSHOT", i)
		}
		if event.GetJob().GetJobId() != jobID {
			t.Fatalf("event %d is about job %q", i, event.GetJob().GetJobId())
		}
		if i < len(events)-1 && jobTerminal[event.GetJob().GetState()] {
			t.Fatalf("event %d is terminal (%v) but not the last", i, event.GetJob().GetState())
		}
	}
	return events
}

// listJobShards reads every page of ListExportJobTasks, one shard a page.
func listJobShards(t *testing.T, jobID string) []*pb.ExportJobTask {
	t.Helper()
	var shards []*pb.ExportJobTask
	token := ""
	for pages := 0; ; pages++ {
		if pages == 1000 {
			t.Fatal("ListExportJobTasks: more than 1000 pages")
		}
		reply, err := client.ListExportJobTasks(ctx(t), &pb.ListExportJobTasksRequest{JobId: jobID, PageSize: 1, PageToken: token})
		must(t, err, "ListExportJobTasks")
		if len(reply.GetTasks()) > 1 {
			t.Fatalf("ListExportJobTasks(page_size=1) gave %d shards", len(reply.GetTasks()))
		}
		shards = append(shards, reply.GetTasks()...)
		if reply.GetNextPageToken() == "" {
			return shards
		}
		if reply.GetNextPageToken() == token {
			t.Fatalf("ListExportJobTasks returned the page token it was given: %q", token)
		}
		token = reply.GetNextPageToken()
	}
}

func TestExportJobOfAChannelListRunsToSuccessAndItsShardsAreOrdinaryTasks(t *testing.T) {
	var refs []*pb.ChannelRef
	for _, channel := range jobChannels {
		refs = append(refs, &pb.ChannelRef{Type: channel[0], Id: channel[1]})
	}
	request := &pb.CreateExportJobRequest{
		Selector:      &pb.CreateExportJobRequest_Channels{Channels: &pb.ChannelList{Channels: refs}},
		MessagesSince: ts(t, "2024-01-01T00:00:00Z"),
		Version:       pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V2,
		RequestId:     newRequestID(t),
	}
	job, err := client.CreateExportJob(ctx(t), request)
	must(t, err, "CreateExportJob")
	if !uuidPattern.MatchString(job.GetJobId()) {
		t.Fatalf("job id %q is not a UUID", job.GetJobId())
	}
	if job.GetOwner() != "anonymous" {
		t.Errorf("owner %q, want anonymous", job.GetOwner())
	}
	if !proto.Equal(job.GetRequest(), request) {
		t.Errorf("the job's request %v, want the request as given %v", job.GetRequest(), request)
	}
	if state := job.GetState(); state != pb.ExportJobState_EXPORT_JOB_STATE_PLANNING && state != pb.ExportJobState_EXPORT_JOB_STATE_RUNNING {
		t.Errorf("a new job is %v", state)
	}
	// A retried create with the same request_id is the same job.
	again, err := client.CreateExportJob(ctx(t), request)
	must(t, err, "CreateExportJob again")
	if again.GetJobId() != job.GetJobId() {
		t.Errorf("a retried create made job %q, want %q", again.GetJobId(), job.GetJobId())
	}

	events := watchJobToEnd(t, job.GetJobId())
	done := events[len(events)-1].GetJob()
	if done.GetState() != pb.ExportJobState_EXPORT_JOB_STATE_SUCCEEDED {
		t.Fatalf("last state %v, want SUCCEEDED: %v", done.GetState(), done)
	}
	shardCount := uint64((len(jobChannels) + jobShardSize - 1) / jobShardSize)
	progress := done.GetProgress()
	got := []uint64{progress.GetChannelsTotal(), progress.GetTasksTotal(), progress.GetTasksSubmitted(), progress.GetTasksCompleted(), progress.GetTasksFailed()}
	if want := []uint64{uint64(len(jobChannels)), shardCount, shardCount, shardCount, 0}; !reflect.DeepEqual(got, want) {
		t.Errorf("progress (channels, tasks, submitted, completed, failed) %v, want %v", got, want)
	}
	if done.GetEndTime() == nil || done.GetEndTime().AsTime().Before(done.GetCreateTime().AsTime()) {
		t.Errorf("end time %v, created %v", done.GetEndTime(), done.GetCreateTime())
	}
	if done.GetError() != nil {
		t.Errorf("a succeeded job has the error %v", done.GetError())
	}

	// The watch leaves the list out of the request; GetExportJob reads the same job with the
	// request whole; ListExportJobs lists it as the watch shows it.
	if n := len(done.GetRequest().GetChannels().GetChannels()); n != 0 {
		t.Errorf("the watched job's request lists %d channels, want them left out", n)
	}
	whole := proto.Clone(done).(*pb.ExportJob)
	whole.Request = request
	read, err := client.GetExportJob(ctx(t), &pb.GetExportJobRequest{JobId: job.GetJobId()})
	must(t, err, "GetExportJob")
	if !proto.Equal(read, whole) {
		t.Errorf("GetExportJob %v, want the watched job with its whole request %v", read, whole)
	}
	var listed []*pb.ExportJob
	for token := ""; ; {
		page, err := client.ListExportJobs(ctx(t), &pb.ListExportJobsRequest{PageSize: 10, PageToken: token})
		must(t, err, "ListExportJobs")
		for _, j := range page.GetJobs() {
			if j.GetJobId() == job.GetJobId() {
				listed = append(listed, j)
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(listed) != 1 || !proto.Equal(listed[0], done) {
		t.Errorf("ListExportJobs lists the job as %v, want once as %v", listed, done)
	}

	// Its shards, a page each: every channel in one shard, every shard's task completed once.
	shards := listJobShards(t, job.GetJobId())
	if uint64(len(shards)) != shardCount {
		t.Fatalf("%d shards, want %d", len(shards), shardCount)
	}
	var exported, requested []string
	for _, channel := range jobChannels {
		requested = append(requested, channel[0]+":"+channel[1])
	}
	taskIDs := map[string]bool{}
	for i, shard := range shards {
		if shard.GetShard() != uint32(i) {
			t.Errorf("shard %d is numbered %d", i, shard.GetShard())
		}
		if len(shard.GetChannels()) > jobShardSize {
			t.Errorf("shard %d has %d channels", i, len(shard.GetChannels()))
		}
		for _, channel := range shard.GetChannels() {
			exported = append(exported, channel.GetType()+":"+channel.GetId())
			if !proto.Equal(channel.GetMessagesSince(), request.GetMessagesSince()) {
				t.Errorf("shard %d: %s is exported since %v, want the job's window", i, channel.GetId(), channel.GetMessagesSince())
			}
		}
		if !uuidPattern.MatchString(shard.GetTaskId()) {
			t.Errorf("shard %d: task id %q", i, shard.GetTaskId())
		}
		taskIDs[shard.GetTaskId()] = true
		if shard.GetState() != pb.TaskState_TASK_STATE_COMPLETED || shard.GetAttempts() != 1 || len(shard.GetEarlierTaskIds()) != 0 {
			t.Errorf("shard %d: %v, want COMPLETED at the first attempt", i, shard)
		}
	}
	sort.Strings(exported)
	sort.Strings(requested)
	if !reflect.DeepEqual(exported, requested) {
		t.Errorf("the shards hold %v, want %v", exported, requested)
	}
	if uint64(len(taskIDs)) != shardCount {
		t.Errorf("%d distinct task ids for %d shards", len(taskIDs), shardCount)
	}

	// A shard's task is an ordinary task: GetTask and ReadExport work on it.
	last := shards[len(shards)-1]
	task, err := client.GetTask(ctx(t), &pb.GetTaskRequest{TaskId: last.GetTaskId()})
	must(t, err, "GetTask of a shard's task")
	if task.GetTaskId() != last.GetTaskId() || task.GetState() != pb.TaskState_TASK_STATE_COMPLETED {
		t.Errorf("GetTask of shard %d's task: %v", last.GetShard(), task)
	}
	var inFile, inShard []string
	for _, record := range readExport(t, last.GetTaskId(), 0) {
		if record["type"] == "channel" {
			item, _ := record["item"].(map[string]interface{})
			id, _ := item["id"].(string)
			inFile = append(inFile, id)
		}
	}
	for _, channel := range last.GetChannels() {
		inShard = append(inShard, channel.GetId())
	}
	sort.Strings(inFile)
	sort.Strings(inShard)
	if !reflect.DeepEqual(inFile, inShard) {
		t.Errorf("the shard's export holds the channels %v, want %v", inFile, inShard)
	}

	// Cancelling a finished job returns it unchanged.
	cancelled, err := client.CancelExportJob(ctx(t), &pb.CancelExportJobRequest{JobId: job.GetJobId()})
	must(t, err, "CancelExportJob")
	if !proto.Equal(cancelled, done) {
		t.Errorf("CancelExportJob of a finished job gave %v, want it unchanged %v", cancelled, done)
	}
	read, err = client.GetExportJob(ctx(t), &pb.GetExportJobRequest{JobId: job.GetJobId()})
	must(t, err, "GetExportJob after the cancel")
	if !proto.Equal(read, whole) {
		t.Errorf("after the cancel, GetExportJob %v, want it unchanged %v", read, whole)
	}
}

func TestUnknownExportJobIsNotFound(t *testing.T) {
	_, err := client.GetExportJob(ctx(t), &pb.GetExportJobRequest{JobId: newRequestID(t)})
	errorDetails(t, err, codes.NotFound, "JOB_NOT_FOUND")
}

func TestExportJobWithoutASelectorIsInvalidArgumentWithBadRequest(t *testing.T) {
	_, err := client.CreateExportJob(ctx(t), &pb.CreateExportJobRequest{Version: pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V2})
	_, badRequest := errorDetails(t, err, codes.InvalidArgument, "INVALID_REQUEST")
	if badRequest == nil {
		t.Fatal("no BadRequest detail")
	}
	var fields []string
	for _, violation := range badRequest.GetFieldViolations() {
		fields = append(fields, violation.GetField())
	}
	if !reflect.DeepEqual(fields, []string{"selector"}) {
		t.Errorf("field violations %v, want one for selector", fields)
	}
}
